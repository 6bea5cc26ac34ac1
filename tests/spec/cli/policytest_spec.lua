-- `scopegate test` (src/cli/policytest.c), the presets (policies/presets), the
-- busted helpers (require "scopegate.testing") and the installed layout of
-- the shipped Lua library, all through the real binary or the real module.
local K = require "keys"
local pt = require "policytest"

local BUILD = os.getenv("SG_BUILD_DIR")
local BIN = BUILD .. "/scopegate"
local EXAMPLES = "policies/examples"

-- Runs a scopegate binary; returns stdout, stderr and the exit code.
local procs = require "procs"
local run = procs.run

local function sg(args) return run(BIN, args) end

local function shipped_tests()
  local list = {}
  for name in K.run("ls " .. EXAMPLES):gmatch("[^\n]+") do
    if name:match("%.test%.lua$") then list[#list + 1] = EXAMPLES .. "/" .. name end
  end
  table.sort(list)
  return list
end

local POLICY = [[
return {
  scopes = { ["a:read"] = "r", ["a:write"] = "w" },
  implies = { ["a:write"] = { "a:read" } },
  tools = {
    look = "a:read",
    touch = "a:write",
  },
  default = "deny",
}
]]

describe("scopegate test on the shipped examples", function()
  it("has a test file for every example policy, and each passes", function()
    local tests = shipped_tests()
    local have = {}
    for _, t in ipairs(tests) do have[t:gsub("%.test%.lua$", ".lua")] = true end
    for name in K.run("ls " .. EXAMPLES):gmatch("[^\n]+") do
      if name:match("%.lua$") and not name:match("%.test%.lua$") then
        assert.is_true(have[EXAMPLES .. "/" .. name], "no test file for " .. name)
      end
    end
    assert.is_true(#tests >= 6)
    for _, t in ipairs(tests) do
      local out, err, code = sg("test " .. t)
      assert.equal(0, code, t .. "\n" .. out .. err)
      assert.matches("^TAP version 13\n", out)
      assert.is_nil(out:find("not ok", 1, true), out)
      local n = tonumber(out:match("\n1%.%.(%d+)\n"))
      assert.is_true(n > 0)
      assert.matches("\n# " .. n .. " passed, 0 failed\n$", out)
    end
  end)

  it("checks every example policy clean", function()
    for _, t in ipairs(shipped_tests()) do
      local p = t:gsub("%.test%.lua$", ".lua")
      local out, _, code = sg("check " .. p)
      assert.equal(0, code, out)
      assert.equal(p .. ": ok\n", out)
    end
  end)

  it("runs a whole directory", function()
    local out, _, code = sg("test " .. EXAMPLES)
    assert.equal(0, code, out)
    for _, t in ipairs(shipped_tests()) do assert.matches("# " .. t, out, 1, true) end
  end)
end)

describe("scopegate test reports", function()
  local dir
  before_each(function()
    dir = pt.tmpdir()
    pt.write(dir, "p.lua", POLICY)
  end)
  after_each(function() pt.rmdir(dir) end)

  it("fails a wrong case with expected vs actual and the deciding rule's file:line", function()
    local t = pt.write(dir, "p.test.lua", [[
return {
  policy = "p.lua",
  cases = {
    { "reader looks", tool = "look", scopes = { "a:read" }, expect = "allow" },
    { "reader touches (wrong on purpose)", tool = "touch", scopes = { "a:read" },
      expect = "allow" },
  },
}
]])
    local out, _, code = sg("test " .. t)
    assert.equal(1, code)
    assert.matches("ok 1 - reader looks\n", out, 1, true)
    assert.matches("not ok 2 - reader touches (wrong on purpose)\n", out, 1, true)
    assert.matches("#   at:       " .. t .. ":5\n", out, 1, true)
    assert.matches("#   expected: allow\n", out, 1, true)
    assert.matches('#   actual:   403 challenge scope="a:read a:write"\n', out, 1, true)
    assert.matches('#   decided:  tools.touch (' .. dir .. '/p.lua:6) requires "a:write"\n', out, 1, true)
    assert.matches("\n1..2\n# 1 passed, 1 failed\n$", out)
  end)

  it("fails wrong challenge scopes, a wrong rule and a wrong visible set", function()
    local t = pt.write(dir, "p.test.lua", [[
return {
  policy = "p.lua",
  upstream_tools = { { name = "look" }, { name = "touch" } },
  cases = {
    { "challenge", tool = "touch", scopes = { "a:read" }, expect = "403", challenge = { "a:write" } },
    { "rule", tool = "look", scopes = { "a:read" }, expect = "allow", rule = "default" },
    { "visible", scopes = { "a:read" }, visible = { "look", "touch" } },
    { "right", scopes = { "a:write" }, visible = { "look", "touch" } },
  },
}
]])
    local out, _, code = sg("test " .. t)
    assert.equal(1, code)
    assert.matches('#   expected: 403 challenge scope="a:write"\n#   actual:   403 challenge scope="a:read a:write"\n', out, 1, true)
    assert.matches("#   expected: allow, rule default\n#   actual:   allow, rule tools.look\n", out, 1, true)
    assert.matches("#   expected visible: look, touch\n#   actual visible:   look\n", out, 1, true)
    assert.matches('#     touch: tools.touch (' .. dir .. '/p.lua:6) requires "a:write"', out, 1, true)
    assert.matches("ok 4 - right\n", out, 1, true)
    assert.matches("# 1 passed, 3 failed\n$", out)
  end)

  it("gives file:line errors for malformed cases and exits 2 without running", function()
    local t = pt.write(dir, "bad.test.lua", [[
return {
  policy = "p.lua",
  cases = {
    { "fine", tool = "look", scopes = { "a:read" }, expect = "allow" },
    { "typo", tool = "look",
      expct = "allow" },
    { "word", tool = "look", expect = "alow" },
    { tool = "look", expect = "allow" },
    { "two messages", tool = "look", prompt = "x", expect = "allow" },
    { "token true", tool = "look", token = true, expect = "allow" },
  },
  polcy = "x",
}
]])
    local out, err, code = sg("test " .. t)
    assert.equal(2, code)
    assert.is_nil(out:find("ok 1", 1, true))
    assert.matches(t .. ':12: unknown key "polcy"', err, 1, true)
    assert.matches(t .. ':6: case 2 "typo": unknown key "expct"', err, 1, true)
    assert.matches(t .. ':7: case 3 "word": expect must be "allow", "401", "403" or "deny", not "alow"', err, 1, true)
    assert.matches(t .. ":8: case 4: the first entry must be a description string", err, 1, true)
    assert.matches(t .. ':9: case 5 "two messages": give exactly one of tool', err, 1, true)
    assert.matches(t .. ':10: case 6 "token true": token can only be false', err, 1, true)
  end)

  it("reports a syntax error, a missing policy and a policy that does not load with exit 2", function()
    local syn = pt.write(dir, "syn.test.lua", 'return {\n  policy = "p.lua",\n  cases = { { "x" tool = "look" } },\n}\n')
    local _, err, code = sg("test " .. syn)
    assert.equal(2, code)
    assert.matches(syn .. ":3:", err, 1, true)
    local nopol = pt.write(dir, "nopol.test.lua", 'return { cases = { { "x", tool = "look", expect = "allow" } } }\n')
    _, err, code = sg("test " .. nopol)
    assert.equal(2, code)
    assert.matches(nopol .. ":1: policy must be the path", err, 1, true)
    pt.write(dir, "broken.lua", "return { tols = {} }\n")
    local broken = pt.write(dir, "broken.test.lua", 'return { policy = "broken.lua", cases = { { "x", tool = "look", expect = "allow" } } }\n')
    local out
    out, err, code = sg("test " .. broken)
    assert.equal(2, code)
    assert.matches('unknown top-level key "tols"', err, 1, true)
    assert.matches("not run (the policy " .. dir .. "/broken.lua does not load)", out, 1, true)
  end)

  it("is confined like a policy (no io, no os.execute)", function()
    local t = pt.write(dir, "io.test.lua", 'io.open("/tmp/x", "w")\nreturn {}\n')
    local _, err, code = sg("test " .. t)
    assert.equal(2, code)
    assert.matches(t .. ":1:", err, 1, true)
  end)

  it("needs a path (usage, exit 2) and documents itself (--help, exit 0)", function()
    local _, err, code = sg("test")
    assert.equal(2, code)
    assert.matches("usage: scopegate test PATH", err, 1, true)
    local out
    out, _, code = sg("test --help")
    assert.equal(0, code)
    assert.matches("0 every case passed, 1 a case failed, 2", out, 1, true)
  end)

  it("accepts full messages as tables or JSON text, claims and headers", function()
    pt.write(dir, "h.lua", [[
return {
  scopes = { ["a:read"] = "r" },
  tools = { look = function(req)
    if req.phase == "call" and req.headers["x-tenant"] ~= "acme" then return { deny = "tenant" } end
    if req.token and req.token.sub == "bob" then return { deny = "not bob" } end
    return "a:read"
  end },
}
]])
    local t = pt.write(dir, "h.test.lua", [[
return {
  policy = "h.lua",
  cases = {
    { "table message", message = { jsonrpc = "2.0", id = 7, method = "tools/call",
        params = { name = "look", arguments = {} } },
      headers = { ["X-Tenant"] = "acme" }, scopes = { "a:read" }, expect = "allow" },
    { "json message", message = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"look"}}',
      headers = { ["x-tenant"] = "acme" }, claims = { sub = "bob", scope = "a:read" }, expect = "deny" },
    { "no header", tool = "look", scopes = { "a:read" }, expect = "deny" },
  },
}
]])
    local out, _, code = sg("test " .. t)
    assert.equal(0, code, out)
    assert.matches("# 3 passed, 0 failed", out, 1, true)
  end)
end)

describe("presets", function()
  local dir
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  local function check(src)
    local p = pt.write(dir, "p.lua", src)
    local out, _, code = sg("check " .. p)
    return out, code, p
  end

  it("raise errors at the policy line that called them", function()
    local out, code, p = check('local presets = require "presets"\n\nlocal p = presets.read_write{ prefx = "j" }\nreturn p\n')
    assert.equal(1, code)
    assert.matches(p .. ':3: error: presets.read_write: unknown option "prefx"', out, 1, true)
    out, code, p = check('local presets = require "presets"\nlocal p = presets.read_write{ read = { "a" } }\nreturn p\n')
    assert.equal(1, code)
    assert.matches(p .. ":2: error: presets.read_write: prefix must be a non-empty string", out, 1, true)
    -- `return presets.x{...}` is a tail call: Lua keeps no caller line, the file is still named.
    out, code, p = check('local presets = require "presets"\nreturn presets.read_write{ read = { "a" } }\n')
    assert.equal(1, code)
    assert.matches(p .. ":%d+: error: presets.read_write: prefix must be a non%-empty string", out)
    out = check('local presets = require "presets"\nreturn presets.read_write{ prefix = "j", read = { "a" }, write = { "a" } }\n')
    assert.matches('presets.read_write: "a" is listed in both read and write', out, 1, true)
    out = check('local presets = require "presets"\nreturn presets.per_resource{ resources = { entries = { red = {} } } }\n')
    assert.matches('presets.per_resource: resources.entries: unknown key "red"', out, 1, true)
    out = check('local presets = require "presets"\nreturn presets.catch_all{}\n')
    assert.matches("presets.catch_all: scope must be a non-empty string", out, 1, true)
    out = check('local presets = require "presets"\nreturn presets.by_annotations{ prefix = "a b" }\n')
    assert.matches("presets.by_annotations: prefix must not contain spaces", out, 1, true)
  end)

  it("return ordinary policy tables the author can extend", function()
    local presets = require "presets"
    local p = presets.read_write { prefix = "j", read = { "r" }, write = { "w" }, admin = { "x" },
                                   tools = { ping = "public" } }
    assert.same({ r = "j:read", w = "j:write", x = "j:admin", ping = "public" }, p.tools)
    assert.same({ ["j:admin"] = { "j:write" }, ["j:write"] = { "j:read" } }, p.implies)
    assert.equal("j:read", p.methods["tools/list"])
    assert.equal("deny", p.default)
    local c = presets.catch_all { scope = "mcp" }
    assert.equal("mcp", c.default)
    local pr = presets.per_resource { resources = { tags = { write = { "t" }, uris = { "x://*" } } } }
    assert.equal("tags:write", pr.tools.t)
    assert.equal("tags:read", pr.resources["x://*"])
  end)

  it("by_annotations classifies by req.annotations and never guesses", function()
    local presets = require "presets"
    local p = presets.by_annotations { prefix = "j" }
    local f = p.default
    assert.equal("j:tools:read", f { method = "tools/call", annotations = { readOnlyHint = true } })
    assert.equal("j:admin", f { method = "tools/call", annotations = { destructiveHint = true } })
    assert.equal("j:tools:write", f { method = "tools/call", annotations = { destructiveHint = false } })
    -- No hints: the MCP defaults (readOnlyHint false, destructiveHint true).
    assert.equal("j:admin", f { method = "tools/call", annotations = {} })
    assert.equal("j:tools:read", f { method = "tools/call",
                                     annotations = { readOnlyHint = true, destructiveHint = true } })
    local d = f { method = "tools/call" }
    assert.matches("^tool not classified yet", d.deny)
    assert.equal("deny", f { method = "prompts/get" })
  end)
end)

describe("scopegate.testing", function()
  local testing = require "scopegate.testing"

  it("decides like the gateway: outcome, challenge and rule", function()
    local t = testing.load(EXAMPLES .. "/read_write.lua")
    local r = t:decide { tool = "create_entry", arguments = { title = "t", body = "b" },
                         scopes = { "journal:read" } }
    assert.equal("403", r.outcome)
    assert.same({ "journal:read", "journal:write" }, r.challenge)
    assert.equal("tools.create_entry", r.rule)
    assert.equal("allow", t:decide { tool = "list_entries", scopes = { "journal:admin" } }.outcome)
    local anon = t:decide { tool = "list_entries" }
    assert.equal("401", anon.outcome)
    assert.same({ "journal:read" }, anon.challenge)
    assert.equal("deny", t:decide { tool = "nope", scopes = { "journal:admin" } }.outcome)
    assert.equal("400", t:decide { message = '{"jsonrpc":"2.0","id":1}' }.outcome)
    t:close()
  end)

  it("passes annotations and filters tools/list", function()
    local tools = {
      { name = "list_entries", annotations = { readOnlyHint = true } },
      { name = "delete_entry", annotations = { destructiveHint = true } },
      { name = "fresh" },
    }
    local t = testing.load(EXAMPLES .. "/by_annotations.lua", { upstream_tools = tools })
    assert.equal("allow", t:decide { tool = "list_entries", scopes = { "journal:tools:read" } }.outcome)
    assert.equal("403", t:decide { tool = "delete_entry", scopes = { "journal:tools:write" } }.outcome)
    assert.equal("deny", t:decide { tool = "fresh", scopes = { "journal:admin" } }.outcome)
    assert.equal("allow", t:decide { tool = "fresh", annotations = { readOnlyHint = true },
                                     scopes = { "journal:tools:read" } }.outcome)
    assert.same({ "list_entries" }, t:visible_tools({ "journal:tools:read" }))
    assert.same({ "delete_entry", "list_entries" }, t:visible_tools(tools, { "journal:admin" }))
    assert.same({}, t:visible_tools(nil))
  end)

  it("raises the loader's errors", function()
    assert.has_error(function() testing.load("/nonexistent/p.lua") end)
  end)
end)

describe("cmake --install", function()
  it("lays out the shipped library where the installed binary finds it", function()
    local prefix = pt.tmpdir()
    local work = pt.tmpdir()
    local ok = os.execute(K.CLEAN .. "cmake --install " .. K.q(BUILD) .. " --prefix " .. K.q(prefix) .. " >/dev/null")
    assert.is_true(ok == true or ok == 0)
    for _, f in ipairs { "/bin/scopegate", "/share/scopegate/lua/presets/init.lua",
                         "/share/scopegate/lua/scopegate/testing.lua",
                         "/lib/scopegate/lua/scopegate/core.so" } do
      assert.is_not_nil(K.read(prefix .. f), f)
    end
    -- An example that requires "presets", outside the source tree.
    os.execute("cp " .. EXAMPLES .. "/read_write.lua " .. EXAMPLES .. "/read_write.test.lua " .. K.q(work))
    local installed = prefix .. "/bin/scopegate"
    local out, _, code = run(installed, "check " .. work .. "/read_write.lua")
    assert.equal(0, code, out)
    out, _, code = run(installed, "test " .. work .. "/read_write.test.lua")
    assert.equal(0, code, out)
    assert.matches("# %d+ passed, 0 failed\n$", out)
    -- It searches its own prefix, not the source tree.
    pt.write(work, "missing.lua", 'return require "presets.nothing"\n')
    out = run(installed, "check " .. work .. "/missing.lua")
    assert.matches(prefix .. "/bin/../share/scopegate/lua/presets/nothing.lua", out, 1, true)
    assert.is_nil(out:find("/policies/presets", 1, true), out)
    pt.rmdir(prefix)
    pt.rmdir(work)
  end)
end)
