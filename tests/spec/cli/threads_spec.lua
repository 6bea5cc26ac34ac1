-- threads_spec.lua -- `scopegate serve` sizes its workers by the CPUs it may use.
--
-- Without --threads the gateway runs one worker per CPU in its affinity
-- mask, lowered to a cgroup CPU quota (rounded up): more workers than CPUs
-- only adds context switches. The real binary under `taskset -c 0` must say
-- 1 worker thread in its ready line; without taskset, the CPUs `nproc`
-- counts (lowered to the cgroup v2 quota when one is set); an explicit
-- --threads always wins. sg_cgroup_cpu_limit, the quota rounding, is checked
-- on its own through the Lua module.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN

-- The CPUs this test may use, counted without scopegate's code: nproc
-- (the affinity mask), lowered to a cgroup v2 `cpu.max` quota if there is one.
local function expected_cpus()
  local p = io.popen(CLEAN .. "nproc")
  local n = assert(tonumber(p:read("a"):match("%d+")))
  p:close()
  local f = io.open("/proc/self/cgroup")
  local rel = f and f:read("a"):match("0::([^\n]*)")
  if f then f:close() end
  local max = rel and procs.read_file("/sys/fs/cgroup" .. (rel == "/" and "" or rel) .. "/cpu.max")
  local quota, period = (max or ""):match("^(%d+) (%d+)")
  if quota then n = math.min(n, math.ceil(tonumber(quota) / tonumber(period))) end
  return n
end

describe("worker threads default to the usable CPUs (real binary)", function()
  local dir, key

  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    keys.write(dir .. "/policy.lua", 'return { resource = "https://t.example.com/mcp", ' ..
               'authorization_servers = { "https://auth.example.com" }, ' ..
               'scopes = { r = "Read" }, tools = { echo = "r" } }\n')
  end)

  teardown(function()
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  -- Starts the gateway under `prefix` (e.g. "taskset -c 0"); returns the
  -- worker count and its wording from the ready line.
  local function ready_threads(name, prefix, extra)
    local err = dir .. "/" .. name .. ".err"
    local pid = procs.spawn(table.concat({ "exec", prefix, q(procs.SCOPEGATE),
      "serve --listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy",
      q(dir .. "/policy.lua"), "--public-key", q(key.pub_file), extra or "" }, " "),
      dir .. "/" .. name .. ".out", err)
    local ok, line = pcall(procs.wait_for, err, "(listening on [^\n]*)", 10)
    procs.stop(pid)
    assert(ok, line)
    local n, how = line:match("(%d+) worker threads?([^)]*)%)$")
    assert(n, "no worker count in: " .. line)
    return tonumber(n), how
  end

  it("runs one worker when pinned to one CPU (taskset -c 0)", function()
    local n, how = ready_threads("pinned", "taskset -c 0")
    assert.are.equal(1, n)
    assert.are.equal(" = usable CPUs", how)
  end)

  it("runs one worker per usable CPU when not pinned", function()
    local n = ready_threads("free", "")
    assert.are.equal(expected_cpus(), n)
  end)

  it("lets an explicit --threads win over the CPU count", function()
    local n, how = ready_threads("explicit", "taskset -c 0", "--threads 3")
    assert.are.equal(3, n)
    assert.are.equal("", how)
  end)

  -- One copy of the policy per worker and no more: without --audience the
  -- copy read for its `resource` is one of them (issue: serve loaded it an
  -- extra time just to learn the audience).
  it("loads the policy once per worker, even to learn the audience", function()
    keys.write(dir .. "/loud.lua", 'print("policy loaded") return { resource = ' ..
               '"https://t.example.com/mcp", authorization_servers = { "https://auth.example.com" }, ' ..
               'scopes = { r = "Read" }, tools = { echo = "r" } }\n')
    for _, threads in ipairs { 1, 3 } do
      local err = dir .. "/loud" .. threads .. ".err"
      local pid = procs.spawn(table.concat({ "exec", q(procs.SCOPEGATE),
        "serve --listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy",
        q(dir .. "/loud.lua"), "--public-key", q(key.pub_file), "--threads", threads }, " "),
        dir .. "/loud.out", err)
      local ok, line = pcall(procs.wait_for, err, "(listening on [^\n]*)", 10)
      procs.stop(pid)
      assert(ok, line)
      local _, loads = procs.read_file(err):gsub("policy loaded", "")
      assert.are.equal(threads, loads)
    end
  end)

  -- Each thread says what it is, for top -H, ps -L and perf.
  it("names its threads", function()
    local err = dir .. "/names.err"
    local pid = procs.spawn(table.concat({ "exec", q(procs.SCOPEGATE),
      "serve --listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy",
      q(dir .. "/policy.lua"), "--public-key", q(key.pub_file), "--threads 2",
      "--audit-log", q(dir .. "/names.audit") }, " "), dir .. "/names.out", err)
    local ok, line = pcall(procs.wait_for, err, "(listening on [^\n]*)", 10)
    -- A thread names itself when it starts to run: give a loaded machine
    -- a moment after the ready line.
    local want, names = { "sg-worker-0", "sg-worker-1", "sg-audit", "sg-reload" }, {}
    for _ = 1, 40 do
      names = {}
      local p = io.popen("cat /proc/" .. pid .. "/task/*/comm 2>/dev/null")
      for n in p:lines() do names[n] = true end
      p:close()
      local all = true
      for _, w in ipairs(want) do all = all and names[w] == true end
      if all then break end
      procs.sleep(0.05)
    end
    procs.stop(pid)
    assert(ok, line)
    for _, w in ipairs(want) do
      assert.is_true(names[w] == true, w .. " not among the threads")
    end
  end)

  it("agrees with the module's count of usable CPUs", function()
    assert.are.equal(expected_cpus(), core.cpus_usable())
  end)
end)

describe("sg_cgroup_cpu_limit: a CFS quota as whole CPUs", function()
  it("rounds a fractional quota up", function()
    assert.are.equal(2, core.cgroup_cpu_limit("150000", "100000"))
    assert.are.equal(1, core.cgroup_cpu_limit("50000", "100000"))
    assert.are.equal(1, core.cgroup_cpu_limit("1", "100000"))
    assert.are.equal(4, core.cgroup_cpu_limit("400000", "100000\n"))
  end)

  it("treats no limit and unreadable text as no limit (0)", function()
    assert.are.equal(0, core.cgroup_cpu_limit("max", "100000"))
    assert.are.equal(0, core.cgroup_cpu_limit("-1", "100000")) -- cgroup v1 "no quota"
    assert.are.equal(0, core.cgroup_cpu_limit("abc", "100000"))
    assert.are.equal(0, core.cgroup_cpu_limit("100000", "0"))
    assert.are.equal(0, core.cgroup_cpu_limit("100000", ""))
    assert.are.equal(0, core.cgroup_cpu_limit(nil, nil))
    assert.are.equal(0, core.cgroup_cpu_limit("0", "100000"))
  end)
end)
