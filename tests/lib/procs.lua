-- procs.lua -- starting and stopping real processes from busted specs, and
-- one HTTP exchange through the curl CLI: the helpers every black-box spec
-- of `scopegate serve` shares, so none grows its own copy.
local keys = require "keys"

local q, CLEAN = keys.q, keys.CLEAN
local M = {}

function M.sleep(s) os.execute(CLEAN .. "sleep " .. s) end

-- A whole file, or nil when it does not exist (yet).
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs a program to completion: returns its stdout, stderr and exit code.
-- args is shell text (quote with keys.q); stdin (optional) is fed to it.
function M.run(bin, args, stdin)
  local dir = keys.tmpdir()
  local cmd = CLEAN .. q(bin) .. " " .. args .. " >" .. dir .. "/out 2>" .. dir .. "/err"
  if stdin then
    keys.write(dir .. "/in", stdin)
    cmd = cmd .. " <" .. dir .. "/in"
  end
  local _, _, code = os.execute(cmd)
  local out, err = keys.read(dir .. "/out"), keys.read(dir .. "/err")
  os.execute(CLEAN .. "rm -rf " .. q(dir))
  return out, err, code
end

-- Waits for a line matching pattern in a file; returns the capture.
function M.wait_for(path, pattern, seconds)
  for _ = 1, math.floor((seconds or 5) / 0.05) do
    local s = M.read_file(path)
    local m = s and s:match(pattern)
    if m then return m end
    M.sleep(0.05)
  end
  error("timed out waiting for " .. pattern .. " in " .. path .. ":\n" .. (M.read_file(path) or ""))
end

function M.alive(pid)
  return os.execute(CLEAN .. "kill -0 " .. pid .. " 2>/dev/null") == true
end

-- Starts a background command; returns its pid. rc_file (optional)
-- receives its exit status.
function M.spawn(cmd, out, err, rc_file)
  local pid_file = os.tmpname()
  os.execute(CLEAN .. "( " .. cmd .. " >" .. q(out) .. " 2>" .. q(err) .. " & echo $! >" ..
             q(pid_file) .. "; wait $!; echo $? >" .. q(rc_file or "/dev/null") .. " ) " ..
             ">/dev/null 2>&1 &")
  local pid
  for _ = 1, 100 do
    pid = (M.read_file(pid_file) or ""):match("%d+")
    if pid then break end
    M.sleep(0.02)
  end
  os.remove(pid_file)
  return assert(pid, "could not start: " .. cmd)
end

-- SIGTERM, then SIGKILL after `seconds` (5). Returns true when it exited
-- by itself.
function M.stop(pid, seconds)
  if not pid then return end
  os.execute(CLEAN .. "kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, math.floor((seconds or 5) / 0.05) do
    if not M.alive(pid) then return true end
    M.sleep(0.05)
  end
  os.execute(CLEAN .. "kill -KILL " .. pid .. " 2>/dev/null")
  return false
end

-- The scopegate binary under test ($SG_BUILD_DIR, set by tests/busted.sh).
M.SCOPEGATE = assert(os.getenv("SG_BUILD_DIR"), "SG_BUILD_DIR not set (use tests/busted.sh)") ..
              "/scopegate"

-- The sanitizer the build under test was made with: "asan" (ASan+UBSan),
-- "tsan", or nil for none. Timing bounds and byte counts that only hold
-- for an uninstrumented binary look here.
M.sanitizer = (function()
  local f = io.open(os.getenv("SG_BUILD_DIR") .. "/CMakeCache.txt")
  local s = f and f:read("a") or ""
  if f then f:close() end
  if s:find("SG_SANITIZE:BOOL=ON", 1, true) then return "asan" end
  if s:find("SG_TSAN:BOOL=ON", 1, true) then return "tsan" end
  return nil
end)()

-- Starts tests/peers/echo_upstream.py on a free loopback port, logging into
-- dir; returns its pid and "127.0.0.1:PORT".
function M.echo_upstream(dir)
  local pid = M.spawn("exec python3 tests/peers/echo_upstream.py --port 0", dir .. "/up.out",
                      dir .. "/up.err")
  return pid, M.wait_for(dir .. "/up.out", "listening on (127%.0%.0%.1:%d+)", 10)
end

-- Starts `scopegate serve --listen 127.0.0.1:0 ARGS` with its log (stderr)
-- in `log`, a file of its own: a reused one could still show an earlier
-- gateway's "listening on" line before the shell truncates it. Returns the
-- pid and "127.0.0.1:PORT" once it listens; one that does not listen
-- within 10 s is stopped and the error names its log.
function M.start_gateway(args, log)
  local pid = M.spawn("exec " .. q(M.SCOPEGATE) .. " serve --listen 127.0.0.1:0 " .. args,
                      log .. ".out", log)
  local ok, addr = pcall(M.wait_for, log, "listening on (127%.0%.0%.1:%d+)", 10)
  if not ok then
    M.stop(pid)
    error(addr, 2)
  end
  return pid, addr
end

-- One HTTP exchange. opts: url (required), scratch (a directory for the
-- request and response files), method, headers (list of "Name: value"),
-- body, body_file, max_time. Returns { status, headers (lower-case names,
-- the last header block), body, t_first, t_total }.
function M.http(opts)
  local dir = assert(opts.scratch, "procs.http: scratch directory")
  local hdr_file, body_file = dir .. "/resp.h", dir .. "/resp.b"
  os.remove(hdr_file)
  os.remove(body_file)
  local cmd = { "curl -s -S --http1.1 -o", q(body_file), "-D", q(hdr_file),
                "-w '%{http_code} %{time_starttransfer} %{time_total}'",
                "--max-time", tostring(opts.max_time or 10) }
  if opts.method then cmd[#cmd + 1] = "-X " .. opts.method end
  for _, h in ipairs(opts.headers or {}) do cmd[#cmd + 1] = "-H " .. q(h) end
  if opts.body then
    local req_file = dir .. "/req.b"
    keys.write(req_file, opts.body)
    cmd[#cmd + 1] = "--data-binary @" .. q(req_file)
  elseif opts.body_file then
    cmd[#cmd + 1] = "--data-binary @" .. q(opts.body_file)
  end
  cmd[#cmd + 1] = q(opts.url)
  local p = io.popen(CLEAN .. table.concat(cmd, " ") .. " 2>/dev/null")
  local out = p:read("a")
  p:close()
  local code, t_first, t_total = out:match("^(%d+) ([%d.]+) ([%d.]+)")
  local headers, raw = {}, M.read_file(hdr_file) or ""
  -- Keep the last header block (after a 100 Continue).
  local last = raw:match(".*\r\n\r\n(HTTP/.-\r\n\r\n)$") or raw
  for name, value in last:gmatch("([%w%-]+): ([^\r\n]*)") do headers[name:lower()] = value end
  return { status = tonumber(code), headers = headers, body = M.read_file(body_file) or "",
           t_first = tonumber(t_first), t_total = tonumber(t_total) }
end

return M
