-- shadow_spec.lua -- `scopegate serve --shadow-policy`, through the real
-- binary: a candidate policy that denies exactly one tool yields exactly one
-- "shadow" record per message naming that tool and changes no answer (every
-- response is compared byte for byte with a gateway run without the
-- shadow), its reload is picked up, a candidate that fails to reload keeps
-- the previous one, and one that fails at start stops the start.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local AUD = "https://shadow.example.com/mcp"

local LIVE = [[
return {
  resource = "https://shadow.example.com/mcp",
  scopes = { ["echo:read"] = "Read", ["echo:write"] = "Write" },
  tools = { echo = "echo:read", plain = "echo:read", write = "echo:write" },
  default = "deny",
}
]]

local dir, key, up_pid, up, tokens = nil, nil, nil, nil, {}
local plain_gw, shadow_gw = {}, {}

local function mint(scope)
  return assert(core.mint { alg = "ES256", key_file = key.priv_file,
    claims = keys.json { aud = AUD, sub = "bob", scope = scope, exp = os.time() + 600 } })
end

local function start(g, name, extra)
  g.err = dir .. "/" .. name .. ".err"
  g.audit = dir .. "/" .. name .. ".audit"
  g.pid, g.addr = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") ..
    " --policy " .. q(dir .. "/live.lua") .. " --public-key " .. q(key.pub_file) ..
    " --key-alg ES256 --audit-log " .. q(g.audit) .. (extra or ""), g.err)
end

local function post(g, body, token, rid)
  local headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                    "X-Request-Id: " .. rid }
  if token then headers[#headers + 1] = "Authorization: Bearer " .. token end
  return procs.http { url = "http://" .. g.addr .. "/mcp", scratch = dir, body = body,
                      headers = headers }
end

local function call(name, id)
  return '{"jsonrpc":"2.0","id":' .. (id or 1) .. ',"method":"tools/call","params":{"name":"' ..
         name .. '"}}'
end

local function shadow_lines(g)
  local out = {}
  for line in (procs.read_file(g.audit) or ""):gmatch("[^\n]+") do
    if line:find('"type":"shadow"', 1, true) then out[#out + 1] = line end
  end
  return out
end

-- Waits until the gateway's audit file holds n shadow records and returns
-- them (the writer thread drains its queue every 20 ms: a record can reach
-- the file after the answer it belongs to has reached the client; a count of
-- decision records is no proxy, since a batch writes one per element).
local function settle(g, n)
  local l
  for _ = 1, 200 do
    l = shadow_lines(g)
    if #l >= n then return l end
    procs.sleep(0.05)
  end
  return l
end

setup(function()
  dir = keys.tmpdir()
  key = keys.gen(dir, "k", "p256")
  keys.write(dir .. "/live.lua", LIVE)
  keys.write(dir .. "/candidate.lua", (LIVE:gsub('plain = "echo:read"', 'plain = "deny"')))
  up_pid, up = procs.echo_upstream(dir)
  start(plain_gw, "plain")
  start(shadow_gw, "shadow", " --shadow-policy " .. q(dir .. "/candidate.lua") ..
    " --admin-listen 127.0.0.1:0")
  shadow_gw.admin = procs.wait_for(shadow_gw.err, "readyz at (127%.0%.0%.1:%d+)", 5)
  tokens = { read = mint("echo:read"), both = mint("echo:read echo:write") }
end)

teardown(function()
  procs.stop(plain_gw.pid)
  procs.stop(shadow_gw.pid)
  procs.stop(up_pid)
  if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
end)

describe("a shadow policy", function()
  it("records each message it decides otherwise, and changes no answer", function()
    local bodies = {
      call("echo"), call("plain"), call("write"), call("nosuch"),
      '{"jsonrpc":"2.0","id":5,"method":"tools/list"}',
      "[" .. call("echo", 6) .. "," .. call("plain", 7) .. "]",
      '{"jsonrpc":"2.0","method":"notifications/initialized"}',
    }
    local callers = { { "anonymous", nil }, { "read", tokens.read }, { "both", tokens.both } }
    local plain_messages = 0
    for _, c in ipairs(callers) do
      for i, body in ipairs(bodies) do
        local rid = "req-" .. c[1] .. "-" .. i
        local a = post(plain_gw, body, c[2], rid)
        local b = post(shadow_gw, body, c[2], rid)
        assert.are.equal(a.status, b.status, rid)
        assert.are.equal(a.body, b.body, rid)
        assert.are.same(a.headers["www-authenticate"], b.headers["www-authenticate"], rid)
        assert.are.same(a.headers["content-type"], b.headers["content-type"], rid)
        local _, k = body:gsub('"name":"plain"', "")
        plain_messages = plain_messages + k
      end
    end
    assert.are.equal(6, plain_messages)
    local records = settle(shadow_gw, plain_messages)
    assert.are.equal(plain_messages, #records)
    assert.are.equal(0, #shadow_lines(plain_gw))
    for _, line in ipairs(records) do
      assert.matches('"name":"plain"', line, 1, true)
      assert.matches('"live":{"decision":"[a-z_]+","rule":"tools.plain"', line)
      assert.matches('"candidate":{"decision":"deny","rule":"tools.plain"', line)
      assert.matches('"required":"deny"}}}$', line)
    end
    -- The read caller was allowed by the live policy and denied by the candidate.
    local read = {}
    for _, line in ipairs(records) do
      if line:find('"request_id":"req-read-2"', 1, true) then read[#read + 1] = line end
    end
    assert.are.equal(1, #read)
    assert.matches('"live":{"decision":"allow"', read[1], 1, true)
    assert.matches('"sub":"bob"', read[1], 1, true)
    local out, err, code = procs.run("tests/peers/node_modules/node/bin/node",
      "tests/audit_validate.mjs " .. q(shadow_gw.audit) .. " " .. q(plain_gw.audit))
    assert.are.equal(0, code, out .. err)
    -- The same counts on /metrics: every disagreement, every line written.
    -- (the writer thread counts a line once it is written: poll briefly)
    local m, written, lines
    for _ = 1, 40 do
      m = procs.http { url = "http://" .. shadow_gw.admin .. "/metrics", scratch = dir }
      assert.are.equal(200, m.status)
      written = tonumber(m.body:match("\nscopegate_audit_lines_written_total (%d+)\n"))
      lines = 0
      for _ in (procs.read_file(shadow_gw.audit) or ""):gmatch("[^\n]+") do lines = lines + 1 end
      if written == lines then break end
      procs.sleep(0.05)
    end
    assert.are.equal(lines, written)
    assert.matches("\nscopegate_shadow_disagreements_total 6\n", m.body, 1, true)
    assert.matches("\nscopegate_audit_lines_dropped_total 0\n", m.body, 1, true)
    keys.write(dir .. "/scrape.txt", m.body)
    local check = io.popen(CLEAN .. "promtool check metrics <" .. q(dir .. "/scrape.txt") .. " 2>&1; echo rc=$?")
    assert.are.equal("rc=0\n", check:read("a"))
    check:close()
  end)

  it("is reloaded when its file changes; a broken candidate keeps the previous one", function()
    local before = #shadow_lines(shadow_gw)
    keys.write(dir .. "/candidate.lua", (LIVE:gsub('echo = "echo:read"', 'echo = "echo:write"')))
    procs.wait_for(shadow_gw.err, "(shadow policy reloaded)", 10)
    assert.are.equal(200, post(shadow_gw, call("echo"), tokens.read, "after-1").status)
    assert.are.equal(200, post(shadow_gw, call("plain"), tokens.read, "after-2").status)
    local l = settle(shadow_gw, before + 1)
    assert.are.equal(before + 1, #l)
    assert.matches('"request_id":"after-1"', l[before + 1], 1, true)
    assert.matches('"candidate":{"decision":"insufficient_scope","rule":"tools.echo"',
                   l[before + 1], 1, true)

    keys.write(dir .. "/candidate.lua", "return { tools = { echo = { al_of = {} } } }\n")
    procs.wait_for(shadow_gw.err, "(shadow policy reload refused)", 10)
    assert.are.equal(200, post(shadow_gw, call("echo"), tokens.read, "after-3").status)
    l = settle(shadow_gw, before + 2)
    assert.matches('"request_id":"after-3"', l[before + 2], 1, true)
  end)

  it("that does not load stops the start; one without --audit-log is refused", function()
    keys.write(dir .. "/broken.lua", "return { tools = { echo = 42 } }\n")
    local base = "serve --listen 127.0.0.1:0 --upstream " .. q("http://" .. up .. "/mcp") ..
                 " --policy " .. q(dir .. "/live.lua") .. " --public-key " .. q(key.pub_file) ..
                 " --key-alg ES256 "
    local _, err, code = procs.run(procs.SCOPEGATE, base .. "--audit-log " ..
      q(dir .. "/x.audit") .. " --shadow-policy " .. q(dir .. "/broken.lua"))
    assert.are.equal(1, code)
    assert.matches("shadow policy: " .. dir .. "/broken.lua:1: ", err, 1, true)
    _, err, code = procs.run(procs.SCOPEGATE, base .. "--shadow-policy " .. q(dir .. "/live.lua"))
    assert.are.equal(2, code)
    assert.matches("--shadow-policy needs --audit-log", err, 1, true)
    -- The same settings from --config (keys audit_log, shadow_policy).
    keys.write(dir .. "/serve.lua", "return { audit_log = " .. keys.json(dir .. "/y.audit") ..
               ", shadow_policy = " .. keys.json(dir .. "/broken.lua") .. " }\n")
    _, err, code = procs.run(procs.SCOPEGATE, base .. "--config " .. q(dir .. "/serve.lua"))
    assert.are.equal(1, code)
    assert.matches("shadow policy: " .. dir .. "/broken.lua:1: ", err, 1, true)
  end)

  it("stops cleanly and counts its disagreements", function()
    assert.is_true(procs.stop(shadow_gw.pid))
    shadow_gw.pid = nil
    local log = procs.read_file(shadow_gw.err)
    assert.matches("audit log: closed: %d+ lines written, 0 dropped %(0 with the queue full%), " ..
                   "0 write errors, 8 shadow disagreements", log)
    assert.is_nil(log:find("Sanitizer", 1, true), log)
    assert.is_nil(log:find("runtime error", 1, true), log)
  end)
end)
