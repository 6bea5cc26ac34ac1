-- audit_spec.lua -- `scopegate serve --audit-log`, through the real binary in
-- front of tests/peers/echo_upstream.py: one record per decided message with
-- the fields docs/operations.md ("Audit log") promises, X-Request-Id sent
-- upstream, argument values only where the policy asks, the file reopened
-- on SIGUSR1, a full queue that drops (and counts) lines instead of slowing
-- requests, every line valid against docs/audit.schema.json (ajv), and no
-- byte of any token in any log.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local ISS = "https://auth.example.com"
local AUD = "https://audit.example.com/mcp"

local POLICY = [[
return {
  resource = "https://audit.example.com/mcp",
  scopes = { ["echo:read"] = "Read", ["echo:write"] = "Write" },
  tools = {
    echo = { rule = "echo:read", audit = { "arguments.id", "arguments.where.city" } },
    plain = "echo:read",
    status = "echo:read",
    write = "echo:write",
    -- One rule, a requirement per request: a kept record part must not
    -- lend one call's requirement to the next.
    flip = function(req)
      if req.phase == "call" and req.arguments and req.arguments.w then return "echo:write" end
      return "echo:read"
    end,
    either = { any_of = { "echo:read", "echo:write" } },
  },
  default = "deny",
}
]]

local dir, key, up_pid, up, gw_pid, gw, gw_err, audit_file
local tokens = {} -- every token minted here: none may show up in a log
local logs = {}   -- every log file a gateway of this spec wrote

local function mint(scope, sub)
  local tok = assert(core.mint { alg = "ES256", key_file = key.priv_file,
    claims = keys.json { iss = ISS, aud = AUD, sub = sub or "alice", client_id = "cli-7", scope = scope,
                         exp = os.time() + 600 } })
  tokens[#tokens + 1] = tok
  return tok
end

local function post(body, opts)
  opts = opts or {}
  local headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream" }
  if opts.token then headers[#headers + 1] = "Authorization: Bearer " .. opts.token end
  for _, h in ipairs(opts.headers or {}) do headers[#headers + 1] = h end
  return procs.http { url = "http://" .. (opts.gw or gw) .. "/mcp", scratch = dir, body = body,
                      headers = headers }
end

local function lines_of(path)
  local out = {}
  for line in (procs.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- Waits until the audit file holds at least n lines (the writer is a thread
-- of its own) and returns them.
local function wait_lines(n, path)
  path = path or audit_file
  for _ = 1, 100 do
    local l = lines_of(path)
    if #l >= n then return l end
    procs.sleep(0.05)
  end
  error("the audit log has " .. #lines_of(path) .. " lines, expected " .. n)
end

-- The raw JSON text of a field of a record ("x" with its quotes for a
-- string, null, 42, {...} for an object without nested braces).
local function field(line, name)
  local pat = '"' .. name .. '":'
  local at = line:find(pat, 1, true)
  if not at then return nil end
  local rest = line:sub(at + #pat)
  return rest:match('^("[^"]*")') or rest:match("^(%b{})") or rest:match("^(%b[])") or
         rest:match("^([^,}]+)")
end

local function call(name, args)
  return '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' .. name .. '"' ..
         (args and (',"arguments":' .. args) or "") .. '}}'
end

setup(function()
  dir = keys.tmpdir()
  key = keys.gen(dir, "k", "p256")
  keys.write(dir .. "/policy.lua", POLICY)
  up_pid, up = procs.echo_upstream(dir)
  gw_err = dir .. "/gw.err"
  audit_file = dir .. "/audit.log"
  logs = { gw_err, dir .. "/up.out", dir .. "/up.err" }
  gw_pid, gw = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") .. " --policy " ..
    q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file) .. " --key-alg ES256" ..
    " --issuer " .. q(ISS) .. " --audit-log " .. q(audit_file), gw_err)
end)

teardown(function()
  procs.stop(gw_pid)
  procs.stop(up_pid)
  if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
end)

describe("the audit log", function()
  local read

  it("records an allowed call: who, what, the rule, scopes, statuses, the asked-for argument", function()
    read = mint("echo:read")
    local r = post(call("echo", '{"id":42,"where":{"city":"Oslo"},"secret":"s3cr3t-value"}'),
                   { token = read })
    assert.are.equal(200, r.status)
    local line = wait_lines(1)[1]
    assert.are.equal('"decision"', field(line, "type"))
    assert.matches('^"%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"$', field(line, "time"))
    assert.are.equal('"127.0.0.1"', field(line, "client"))
    assert.are.equal('"POST"', field(line, "http_method"))
    assert.are.equal('"alice"', field(line, "sub"))
    assert.are.equal('"cli-7"', field(line, "client_id"))
    assert.are.equal('"' .. ISS .. '"', field(line, "iss"))
    assert.are.equal('"tools/call"', field(line, "method"))
    assert.are.equal('"echo"', field(line, "name"))
    assert.are.equal('"allow"', field(line, "decision"))
    assert.are.equal('"tools.echo"', field(line, "rule"))
    assert.are.equal('"' .. dir .. '/policy.lua"', field(line, "rule_file"))
    assert.are.equal("5", field(line, "rule_line"))
    assert.are.equal('"echo:read"', field(line, "required"))
    assert.are.equal('["echo:read"]', field(line, "granted"))
    assert.are.equal('{"arguments.id":42,"arguments.where.city":"Oslo"}', field(line, "arguments"))
    assert.is_nil(line:find("s3cr3t", 1, true), "an argument the rule did not name is not recorded")
    assert.are.equal("200", field(line, "status"))
    assert.are.equal('{"status":200,"outcome":"ok"}', field(line, "upstream"))
    assert.matches("^%d+%.%d%d%d$", field(line, "latency_ms"))
    local policy_hash = field(line, "policy")
    assert.matches('^"%x+"$', policy_hash)
    assert.matches(policy_hash:sub(2, -2), procs.read_file(gw_err), 1, true)
    -- The generated request id went upstream.
    local rid = field(line, "request_id"):sub(2, -2)
    assert.matches("^%x+%-%d+%-%d+$", rid)
    assert.are.equal(rid, r.body:match('"x%-request%-id": "([^"]*)"'))
  end)

  it("records nothing of an argument on a rule without `audit`", function()
    local before = #lines_of(audit_file)
    assert.are.equal(200, post(call("plain", '{"id":42}'), { token = read }).status)
    local line = wait_lines(before + 1)[before + 1]
    assert.are.equal('"plain"', field(line, "name"))
    assert.is_nil(field(line, "arguments"))
  end)

  it("records a 401 without a caller, a 403 with its step-up, and an unknown tool", function()
    local before = #lines_of(audit_file)
    assert.are.equal(401, post(call("echo")).status)
    assert.are.equal(403, post(call("write"), { token = read }).status)
    assert.are.equal(403, post(call("nosuch"), { token = read }).status)
    local l = wait_lines(before + 3)
    local anon, up403, unknown = l[before + 1], l[before + 2], l[before + 3]
    assert.are.equal('"unauthorized"', field(anon, "decision"))
    assert.are.equal("null", field(anon, "sub"))
    assert.are.equal("401", field(anon, "status"))
    assert.are.equal("null", field(anon, "upstream"))
    assert.are.equal('"insufficient_scope"', field(up403, "decision"))
    assert.are.equal('"echo:write"', field(up403, "required"))
    assert.are.equal('["echo:read","echo:write"]', field(up403, "step_up"))
    assert.are.equal("403", field(up403, "status"))
    assert.are.equal('"deny"', field(unknown, "decision"))
    assert.are.equal('"default"', field(unknown, "rule"))
    assert.are.equal('"deny"', field(unknown, "required"))
    assert.is_nil(field(unknown, "step_up"))
  end)

  it("writes one record per element of a batch, each with its own rule", function()
    local before = #lines_of(audit_file)
    local r = post('[' .. call("echo"):gsub('"id":1', '"id":"a"') .. ',' ..
                   call("write"):gsub('"id":1', '"id":"b"') .. ']', { token = read })
    assert.are.equal(403, r.status)
    local l = wait_lines(before + 2)
    assert.are.equal(before + 2, #l)
    assert.are.equal('{"index":0,"size":2}', field(l[before + 1], "batch"))
    assert.are.equal('{"index":1,"size":2}', field(l[before + 2], "batch"))
    assert.are.equal(field(l[before + 1], "request_id"), field(l[before + 2], "request_id"))
    assert.are.equal('"tools.echo"', field(l[before + 1], "rule"))
    assert.are.equal('"allow"', field(l[before + 1], "message_decision"))
    assert.are.equal('"tools.write"', field(l[before + 2], "rule"))
    assert.are.equal('"insufficient_scope"', field(l[before + 2], "message_decision"))
    assert.are.equal('"insufficient_scope"', field(l[before + 1], "decision"))
  end)

  it("records the upstream's outcome: a 5xx, a JSON-RPC error, an isError result", function()
    local before = #lines_of(audit_file)
    assert.are.equal(503, post(call("status", '{"status":503}'), { token = read }).status)
    local function raw(answer)
      return '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"plain",' ..
             '"_meta":{"raw":{"type":"application/json","body":' .. keys.json(answer) .. '}}}}'
    end
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"error":{"code":-32602,' ..
                                   '"message":"bad"}}'), { token = read }).status)
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"result":{"content":[],' ..
                                   '"isError":true}}'), { token = read }).status)
    -- Answers the one-pass reader leaves to the strict parse: a member name
    -- written with escapes is decoded there ("\u0069d" is "id"); a result
    -- given twice is no answer the audit log can account for.
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","\\u0069d":1,"error":{"code":1,' ..
                                   '"message":"x"}}'), { token = read }).status)
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"result":{},"result":{' ..
                                   '"isError":true}}'), { token = read }).status)
    -- An isError deeper than the result's own members is not the result's.
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":' ..
                                   '"text","text":"{\\"isError\\":true}","isError":true}]}}'),
                               { token = read }).status)
    -- Long strings are read sixteen or eight bytes at a time: a tool error
    -- after a long text is still seen, and a raw control character deep in
    -- one leaves the answer unreadable (no answer to account for).
    local text = string.rep("All work and no play. ", 4)
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":' ..
                                   '"text","text":"' .. text .. '"}],"isError":true}}'),
                               { token = read }).status)
    assert.are.equal(200, post(raw('{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":' ..
                                   '"text","text":"' .. text .. '\t' .. text .. '"}]}}'),
                               { token = read }).status)
    local l = wait_lines(before + 8)
    assert.are.equal('{"status":200,"outcome":"tool_error"}', field(l[before + 7], "upstream"))
    assert.are.equal('{"status":200,"outcome":"no_answer"}', field(l[before + 8], "upstream"))
    assert.are.equal("503", field(l[before + 1], "status"))
    assert.are.equal('{"status":503,"outcome":"http_error"}', field(l[before + 1], "upstream"))
    assert.are.equal('{"status":200,"outcome":"jsonrpc_error"}', field(l[before + 2], "upstream"))
    assert.are.equal('{"status":200,"outcome":"tool_error"}', field(l[before + 3], "upstream"))
    assert.are.equal('{"status":200,"outcome":"jsonrpc_error"}', field(l[before + 4], "upstream"))
    assert.are.equal('{"status":200,"outcome":"no_answer"}', field(l[before + 5], "upstream"))
    assert.are.equal('{"status":200,"outcome":"ok"}', field(l[before + 6], "upstream"))
  end)

  it("keeps a valid client X-Request-Id and replaces an invalid one", function()
    local before = #lines_of(audit_file)
    local valid = "trace-1:a.b_C"
    local r1 = post(call("plain"), { token = read, headers = { "X-Request-Id: " .. valid } })
    local r2 = post(call("plain"), { token = read, headers = { "X-Request-Id: bad id!" } })
    local long = string.rep("a", 129)
    local r3 = post(call("plain"), { token = read, headers = { "X-Request-Id: " .. long } })
    local r4 = post(call("plain"), { token = read, headers = { "X-Request-Id: " .. string.rep("b", 128) } })
    local l = wait_lines(before + 4)
    assert.are.equal('"' .. valid .. '"', field(l[before + 1], "request_id"))
    assert.are.equal(valid, r1.body:match('"x%-request%-id": "([^"]*)"'))
    for i, r in ipairs { r2, r3 } do
      local rid = field(l[before + 1 + i], "request_id"):sub(2, -2)
      assert.matches("^%x+%-%d+%-%d+$", rid)
      assert.are.equal(rid, r.body:match('"x%-request%-id": "([^"]*)"'))
    end
    assert.is_nil(r2.body:find("bad id", 1, true), "an invalid id is never forwarded")
    -- A piece of the caller's own token is no request id.
    local sig = read:match("%.([^.]+)$"):sub(1, 40)
    local r5 = post(call("plain"), { token = read, headers = { "X-Request-Id: " .. sig } })
    local l5 = wait_lines(before + 5)[before + 5]
    assert.matches("^%x+%-%d+%-%d+$", field(l5, "request_id"):sub(2, -2))
    assert.is_nil(r5.body:match('"x%-request%-id": "' .. sig), "not forwarded either")
    assert.is_nil(r3.body:find(long, 1, true))
    assert.are.equal(string.rep("b", 128), r4.body:match('"x%-request%-id": "([^"]*)"'))
  end)

  it("reopens the file on SIGUSR1 after logrotate moved it", function()
    local n0 = #lines_of(audit_file)
    assert.are.equal(200, post(call("plain"), { token = read }).status)
    local before = #wait_lines(n0 + 1) -- this call's line is written before the move
    os.execute(CLEAN .. "mv " .. q(audit_file) .. " " .. q(audit_file .. ".1"))
    os.execute(CLEAN .. "kill -USR1 " .. gw_pid)
    procs.wait_for(gw_err, "(audit log: reopened)", 5)
    assert.are.equal(200, post(call("plain"), { token = read }).status)
    local fresh = wait_lines(1)
    assert.are.equal(1, #fresh)
    assert.are.equal(before, #lines_of(audit_file .. ".1"), "the moved file gets nothing more")
  end)
end)

describe("a worker's kept record parts", function()
  -- A worker keeps the parts of a record the next request usually repeats
  -- (the caller, the rule, the middle from http_method to the rule's line).
  -- One worker, so every request below meets what the one before left:
  -- each record must still say what its own request was.
  it("never lend one request's caller, tool, rule or decision to the next", function()
    local err, file = dir .. "/gw-kept.err", dir .. "/audit-kept.log"
    logs[#logs + 1] = err
    keys.write(dir .. "/kept.lua", POLICY)
    local pid, addr = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") ..
      " --policy " .. q(dir .. "/kept.lua") .. " --public-key " .. q(key.pub_file) ..
      " --key-alg ES256 --issuer " .. q(ISS) .. " --audit-log " .. q(file) .. " --threads 1", err)
    local alice, bob = mint("echo:read"), mint("echo:read", "bob")
    local both = mint("echo:read echo:write", "bob")
    local ping = '{"jsonrpc":"2.0","id":2,"method":"ping"}'
    local steps = {
      { call("echo"), alice, 200, { sub = '"alice"', name = '"echo"', rule = '"tools.echo"', rule_line = "5", decision = '"allow"' } },
      { call("echo"), alice, 200, { sub = '"alice"', name = '"echo"', rule = '"tools.echo"', rule_line = "5", decision = '"allow"' } },
      { call("echo"), bob, 200, { sub = '"bob"', name = '"echo"', rule = '"tools.echo"', decision = '"allow"' } },
      { call("plain"), bob, 200, { sub = '"bob"', name = '"plain"', rule = '"tools.plain"', rule_line = "6" } },
      { ping, bob, 200, { sub = '"bob"', method = '"ping"', name = "null", rule = '"builtin.ping"', rule_line = "null" } },
      { call("write"), bob, 403, { sub = '"bob"', name = '"write"', decision = '"insufficient_scope"', required = '"echo:write"' } },
      { call("echo"), nil, 401, { sub = "null", name = '"echo"', decision = '"unauthorized"' } },
      -- Tools without a rule of their own: the same rule (default), only the name differs.
      { call("nosuch1"), bob, 403, { sub = '"bob"', name = '"nosuch1"', rule = '"default"', decision = '"deny"' } },
      { call("nosuch2"), bob, 403, { sub = '"bob"', name = '"nosuch2"', rule = '"default"', decision = '"deny"' } },
      { call("echo"), bob, 200, { sub = '"bob"', name = '"echo"', decision = '"allow"', rule_line = "5" } },
      -- The same rule and decision, another requirement; then the same
      -- requirement for another caller with other scopes.
      { call("flip", '{"w":false}'), both, 200, { name = '"flip"', required = '"echo:read"' } },
      { call("flip", '{"w":true}'), both, 200, { name = '"flip"', required = '"echo:write"' } },
      { call("flip", '{"w":false}'), both, 200, { name = '"flip"', required = '"echo:read"' } },
      { call("either"), both, 200, { required = '{"any_of":["echo:read","echo:write"]}', granted = '["echo:read","echo:write"]' } },
      { call("either"), both, 200, { required = '{"any_of":["echo:read","echo:write"]}', granted = '["echo:read","echo:write"]' } },
      { call("either"), bob, 200, { required = '{"any_of":["echo:read","echo:write"]}', granted = '["echo:read"]' } },
      { call("flip", '{"w":false}'), bob, 200, { required = '"echo:read"', granted = '["echo:read"]' } },
      { call("flip", '{"w":false}'), both, 200, { required = '"echo:read"', granted = '["echo:read","echo:write"]' } },
    }
    for i, st in ipairs(steps) do
      assert.are.equal(st[3], post(st[1], { token = st[2], gw = addr }).status, "step " .. i)
      local line = wait_lines(i, file)[i]
      for k, v in pairs(st[4]) do assert.are.equal(v, field(line, k), "step " .. i .. ": " .. k) end
    end
    -- A reload that moves the rule: same caller, tool and decision, new line.
    keys.write(dir .. "/kept.lua", "-- moved down a line\n" .. POLICY)
    procs.wait_for(err, "policy reloaded", 5)
    assert.are.equal(200, post(call("echo"), { token = bob, gw = addr }).status)
    local line = wait_lines(#steps + 1, file)[#steps + 1]
    assert.are.equal("6", field(line, "rule_line"))
    assert.are_not.equal(field(wait_lines(1, file)[1], "policy"), field(line, "policy"))
    -- A reload that changes only the policy's text: everything the same but
    -- the policy's hash.
    keys.write(dir .. "/kept.lua", "-- moved down a line\n" .. POLICY .. "-- and a comment\n")
    procs.wait_for(err, "policy reloaded.*policy reloaded", 5)
    assert.are.equal(200, post(call("echo"), { token = bob, gw = addr }).status)
    local last = wait_lines(#steps + 2, file)[#steps + 2]
    assert.are.equal("6", field(last, "rule_line"))
    assert.are_not.equal(field(line, "policy"), field(last, "policy"))
    assert.is_true(procs.stop(pid))
  end)
end)

describe("a full audit queue", function()
  it("drops and counts lines, and requests do not wait for the file", function()
    local fifo = dir .. "/audit.fifo"
    os.execute(CLEAN .. "mkfifo " .. q(fifo))
    -- A process that holds the FIFO open and never reads it: the pipe fills.
    local holder = procs.spawn("exec sleep 600 <>" .. q(fifo), dir .. "/holder.out",
                               dir .. "/holder.err")
    local err = dir .. "/gw2.err"
    logs[#logs + 1] = err
    local pid, addr = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") ..
      " --policy " .. q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file) ..
      " --key-alg ES256 --issuer " .. q(ISS) .. " --audit-log " .. q(fifo) ..
      " --audit-queue 4", err)
    local tok = mint("echo:read")
    local batch = {}
    for i = 1, 100 do batch[i] = call("plain"):gsub('"id":1', '"id":' .. i) end
    local body = "[" .. table.concat(batch, ",") .. "]"
    local slowest = 0
    for _ = 1, 8 do -- 800 records of about 500 bytes: far more than a pipe holds
      local r = post(body, { token = tok, gw = addr })
      assert.are.equal(200, r.status)
      slowest = math.max(slowest, r.t_total)
    end
    assert.is_true(slowest < 2, "a request waited " .. slowest .. " s")
    local dropped = tonumber(procs.wait_for(err, "audit log: (%d+) lines dropped", 5))
    assert.is_true(dropped > 0)
    assert.is_true(procs.stop(pid), "the gateway stops even though the FIFO takes nothing")
    local total, queue_full = procs.read_file(err):match(
      "audit log: closed: %d+ lines written, (%d+) dropped %((%d+) with the queue full%)")
    assert.is_true(tonumber(total) >= dropped)
    assert.is_true(tonumber(queue_full) > 0)
    procs.stop(holder)
  end)
end)

describe("a write error (a full disk)", function()
  it("drops the lines, says so, and never slows a request", function()
    local err = dir .. "/gw3.err"
    logs[#logs + 1] = err
    local pid, addr = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") ..
      " --policy " .. q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file) ..
      " --key-alg ES256 --issuer " .. q(ISS) .. " --audit-log /dev/full", err)
    local tok = mint("echo:read")
    for _ = 1, 3 do
      local r = post(call("plain"), { token = tok, gw = addr })
      assert.are.equal(200, r.status)
      assert.is_true(r.t_total < 2)
    end
    procs.wait_for(err, "(audit log: write failed %(No space left on device%))", 5)
    assert.is_true(procs.stop(pid))
    local written, dropped, errors = procs.read_file(err):match(
      "audit log: closed: (%d+) lines written, (%d+) dropped %(%d+ with the queue full%), (%d+) write errors")
    assert.are.equal("0", written)
    assert.are.equal("3", dropped)
    assert.is_true(tonumber(errors) >= 1)
  end)
end)

describe("every log of this spec", function()
  it("ends with a clean shutdown that reports the totals", function()
    assert.is_true(procs.stop(gw_pid))
    gw_pid = nil
    local log = procs.read_file(gw_err)
    assert.matches("audit log: closed: %d+ lines written, 0 dropped", log)
    assert.is_nil(log:find("Sanitizer", 1, true), log)
    assert.is_nil(log:find("runtime error", 1, true), log)
  end)

  it("holds audit lines that the schema accepts", function()
    local out, err, code = procs.run("tests/peers/node_modules/node/bin/node",
      "tests/audit_validate.mjs " .. q(audit_file) .. " " .. q(audit_file .. ".1"))
    assert.are.equal(0, code, out .. err)
    assert.matches("audit_validate: %d+ lines valid", out)
  end)

  it("holds no byte of any token: not whole, not its payload, not its signature", function()
    local all = {}
    for _, f in ipairs(logs) do all[#all + 1] = procs.read_file(f) or "" end
    all[#all + 1] = procs.read_file(audit_file) or ""
    all[#all + 1] = procs.read_file(audit_file .. ".1") or ""
    local text = table.concat(all, "\n")
    assert.is_true(#tokens >= 2)
    for _, tok in ipairs(tokens) do
      local header, payload, sig = tok:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      assert.is_nil(text:find(tok, 1, true))
      assert.is_nil(text:find(payload, 1, true))
      assert.is_nil(text:find(sig, 1, true))
      assert.is_nil(text:find(sig:sub(1, 16), 1, true), "not even a piece of the signature")
      assert.is_not_nil(header)
    end
  end)
end)
