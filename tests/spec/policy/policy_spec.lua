-- tests/spec/policy/policy_spec.lua -- loading, compiling and deciding Lua policies
-- through the real C code (src/policy/policy.c) via scopegate.core.
local pt = require "policytest"
local procs = require "procs"
local core = pt.core

local JOURNAL = "policies/examples/journal.lua"

local function decide(p, t)
  return p:decide(t)
end

describe("the journal example", function()
  local p
  setup(function()
    local err
    p, err = core.policy_load(JOURNAL)
    assert(p, err)
  end)
  teardown(function() p:close() end)

  local function call(name, args)
    return decide(p, { method = "tools/call", name = name, arguments_json = args })
  end

  it("exposes its metadata", function()
    local info = p:info()
    assert.equal("journal", info.realm)
    assert.equal("https://journal.example.com/mcp", info.resource)
    assert.same({ "https://auth.example.com" }, info.authorization_servers)
    assert.same({ "journal:entries:read" }, info.scopes_supported)
    -- declared scopes are interned in bytewise order: ids are the same in every worker's state
    assert.same({ "journal:admin", "journal:entries:read", "journal:entries:write" }, info.universe)
    assert.is_true(info.has_public_rule)
  end)

  it("decides a one-scope tool", function()
    local d = call("list_entries")
    assert.same({ rule = "tools.list_entries", requirement = '"journal:entries:read"',
                  line = pt.line_of(JOURNAL, "list_entries ="), file = JOURNAL },
                { rule = d.rule, requirement = d.requirement, line = d.line, file = d.file })
    assert.is_nil(d.error)
  end)

  it("decides any_of and all_of", function()
    assert.equal('{ any_of = { "journal:entries:read", "journal:entries:write" } }',
      call("get_entry").requirement)
    assert.equal('{ all_of = { "journal:entries:read", "journal:entries:write" } }',
      call("tag_entry").requirement)
    assert.equal(pt.line_of(JOURNAL, "tag_entry "), call("tag_entry").line)
  end)

  it("decides a public tool", function()
    assert.equal('"public"', call("ping").requirement)
  end)

  it("runs a function rule per request, with why", function()
    local d = call("delete_entry", '{"permanent": true}')
    assert.equal('{ all_of = { "journal:admin" }, why = "permanent deletion" }', d.requirement)
    assert.equal("permanent deletion", d.why)
    assert.equal(pt.line_of(JOURNAL, "delete_entry = function"), d.line)
    assert.equal('"journal:entries:write"', call("delete_entry", '{"permanent": false}').requirement)
    assert.equal('"journal:entries:write"', call("delete_entry").requirement)
    local l = decide(p, { phase = "list", method = "tools/list", name = "delete_entry" })
    assert.equal('"journal:entries:write"', l.requirement)
    assert.is_nil(l.error)
  end)

  it("matches resource patterns, prompts and methods", function()
    local d = decide(p, { method = "resources/read", name = "journal://entries/2024-05-01" })
    assert.same({ "resources.journal://entries/*", '"journal:entries:read"' }, { d.rule, d.requirement })
    assert.equal('"journal:entries:read"',
      decide(p, { method = "resources/subscribe", name = "journal://entries/x" }).requirement)
    d = decide(p, { method = "resources/read", name = "journal://drafts/1" })
    assert.same({ "default", "false" }, { d.rule, d.requirement })
    d = decide(p, { method = "prompts/get", name = "summarize_week" })
    assert.same({ "prompts.summarize_week", '"journal:entries:read"' }, { d.rule, d.requirement })
    d = decide(p, { method = "logging/setLevel" })
    assert.same({ "methods.logging/setLevel", '"journal:admin"' }, { d.rule, d.requirement })
  end)

  it("matches resource URIs in their RFC 3986 normal form, denies those without one", function()
    for _, phase in ipairs { "call", "list" } do
      for _, uri in ipairs { "journal://entries/../../admin", "journal://entries/%2e%2e/%2E%2E/admin",
                             "journal://entries/a%2Fb", "journal://entries/%zz" } do
        local d = decide(p, { method = "resources/read", name = uri, phase = phase })
        assert.same({ "resource-uri", "false" }, { d.rule, d.requirement }, uri)
      end
      local d = decide(p, { method = "resources/read", name = "JOURNAL://entries/x/./%7e", phase = phase })
      assert.same({ "resources.journal://entries/*", '"journal:entries:read"' }, { d.rule, d.requirement })
      d = decide(p, { method = "resources/read", name = "journal://entries/../drafts/1", phase = phase })
      assert.same({ "resource-uri", "false" }, { d.rule, d.requirement })
    end
  end)

  it("sends what is not named to default", function()
    local d = call("drop_database")
    assert.same({ "default", "false", pt.line_of(JOURNAL, "default   =") },
      { d.rule, d.requirement, d.line })
    d = decide(p, { phase = "list", method = "tools/list", name = "drop_database" })
    assert.same({ "default", "false" }, { d.rule, d.requirement })
    assert.equal("default", decide(p, { method = "sampling/createMessage" }).rule)
  end)

  it("makes protocol plumbing public when a rule is public", function()
    for _, m in ipairs { "initialize", "ping", "server/discover", "tools/list", "prompts/list",
                         "resources/list", "resources/templates/list", "completion/complete",
                         "notifications/initialized" } do
      local d = decide(p, { method = m })
      assert.same({ "builtin." .. m, '"public"', 0 }, { d.rule, d.requirement, d.line })
    end
  end)

  it("checks clean", function()
    local n, report = core.policy_check(JOURNAL)
    assert.equal(0, n)
    assert.equal("", report)
  end)
end)

describe("policy loading", function()
  local dir
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  local function load_src(src, limits)
    local path = pt.write(dir, "p.lua", src)
    local p, err = core.policy_load(path, limits)
    return p, err, path
  end

  local function load_error(src)
    local p, err, path = load_src(src)
    assert.is_nil(p)
    return err, path
  end

  it("names file, line and key for a typo in a requirement", function()
    local err, path = load_error([[
return {
  scopes = { a = "A", b = "B" },
  tools = {
    fine = "a",
    tag_entry = {
      al_of = { "a", "b" },
    },
  },
}
]])
    assert.equal(path .. ':6: tools.tag_entry: unknown key "al_of" in requirement (expected all_of, any_of or deny)', err)
  end)

  it("refuses unknown top-level keys", function()
    local err, path = load_error('return {\n  realm = "x",\n  tols = {},\n}\n')
    assert.equal(path .. ':3: unknown top-level key "tols" (expected realm, resource, '
      .. 'authorization_servers, scopes, advertise, implies, tools, resources, prompts, '
      .. 'methods, default or tool_annotations)', err)
  end)

  it("accepts tool_annotations = \"upstream\" and nothing else", function()
    local p = assert(load_src('return { tool_annotations = "upstream", default = "deny" }\n'))
    p:close()
    local err, path = load_error('return {\n  tool_annotations = "server",\n}\n')
    assert.equal(path .. ':2: tool_annotations: must be "upstream" (learn tools\' MCP annotations '
      .. 'from the upstream\'s tools/list), not "server"', err)
  end)

  it("reports several typos at once, each with its line", function()
    local err, path = load_error([[
return {
  scopes = { a = "A" },
  tools = {
    x = { any_of = {} },
    y = { all_of = { "a" }, any_of = { "a" } },
    z = true,
  },
  prompts = { "a" },
  default = 42,
}
]])
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    local n, report = core.policy_check(path)
    assert.equal(5, n)
    assert.matches(path .. ":4: error: tools.x: any_of is empty", report, 1, true)
    assert.matches(path .. ":9: error: default: expected a requirement", report, 1, true)
    assert.same({
      path .. ":4: tools.x: any_of is empty (an empty list would mean never)",
      path .. ":5: tools.y: requirement table must use only one of all_of, any_of or deny (nest the others inside it)",
      path .. ":6: tools.z: true is not a requirement (say \"public\" or \"authenticated\")",
      path .. ":8: prompts: keys must be names (found a number key: write name = requirement, not a list)",
      path .. ":9: default: expected a requirement (a scope string, \"public\", \"authenticated\", false or a table with all_of, any_of or deny), got number",
    }, lines)
  end)

  it("refuses invalid scope tokens wherever they appear", function()
    local err, path = load_error([[
return {
  scopes = {
    ["good"] = "ok",
    ["has space"] = "bad",
  },
  tools = {
    q = 'say"what',
    n = { any_of = { "good", { all_of = { "back\\slash" } } } },
  },
  advertise = { "" },
}
]])
    assert.matches(path .. ':4: scopes: invalid scope "has space"', err, 1, true)
    assert.matches(path .. ':7: tools.q: invalid scope "say"what"', err, 1, true)
    assert.matches(path .. ':8: tools.n: invalid scope "back\\slash"', err, 1, true)
    assert.matches(path .. ':10: advertise: entry 1 must be a non-empty string', err, 1, true)
  end)

  it("refuses functions inside lists and non-table policies", function()
    local err, path = load_error('return { tools = { f = { any_of = { function() end } } } }')
    assert.equal(path .. ":1: tools.f: functions are only allowed as a whole rule, not inside all_of/any_of", err)
    err, path = load_error('return "public"')
    assert.equal(path .. ":1: a policy file must return a table, got string", err)
  end)

  it("reports syntax errors and unreadable files with their place", function()
    local err, path = load_error('return {\n  tools = { x = "a" \n')
    assert.matches("^" .. path:gsub("%p", "%%%0") .. ":3: .*'}' expected", err)
    local p, e = core.policy_load(dir .. "/nope.lua")
    assert.is_nil(p)
    assert.equal(dir .. "/nope.lua: cannot read policy: No such file or directory", e)
  end)

  it("warns (check) but loads when a scope is not declared", function()
    local p, err, path = load_src([[
return {
  scopes = { a = "A" },
  tools = { x = "a", y = { any_of = { "a", "undeclared:scope" } } },
}
]])
    assert(p, err)
    p:close()
    local n, report = core.policy_check(path)
    assert.equal(0, n)
    assert.equal(path .. ':3: warning: tools.y: scope "undeclared:scope" is not declared in `scopes`\n', report)
  end)

  it("compiles deny forms and why", function()
    local p = assert(load_src([[
return {
  scopes = { a = "A" },
  tools = {
    off = false,
    never = "deny",
    gone = { deny = "retired in v2" },
    careful = { any_of = { "a" }, why = "audited" },
    anyone = "authenticated",
  },
}
]]))
    local function req(name) return p:decide { method = "tools/call", name = name }.requirement end
    assert.equal("false", req("off"))
    assert.equal("false", req("never"))
    assert.equal('{ deny = "retired in v2" }', req("gone"))
    assert.equal('{ any_of = { "a" }, why = "audited" }', req("careful"))
    assert.equal('"authenticated"', req("anyone"))
    -- no public rule: plumbing needs a token
    assert.equal('"authenticated"', p:decide { method = "initialize" }.requirement)
    -- no default: deny
    assert.same({ "default", "false", 0 }, (function()
      local d = p:decide { method = "tools/call", name = "other" }
      return { d.rule, d.requirement, d.line }
    end)())
    p:close()
  end)

  it("picks resource rules deterministically", function()
    local p = assert(load_src([[
return {
  scopes = { a = "A", b = "B", c = "C", d = "D", e = "E" },
  resources = {
    ["file:///*"] = "a",
    ["file:///docs/*"] = "b",
    ["file:///docs/readme"] = "c",
    ["x://a*"] = "e",
    ["x://*b"] = "d",
  },
}
]]))
    local function req(uri) return p:decide { method = "resources/read", name = uri }.requirement end
    assert.equal('"c"', req("file:///docs/readme"))
    assert.equal('"b"', req("file:///docs/other"))
    assert.equal('"a"', req("file:///etc/passwd"))
    assert.equal('"d"', req("x://ab")) -- equal literal length: bytewise order of the patterns
    assert.equal('"e"', req("x://ac"))
    assert.equal("false", req("y://z"))
    p:close()
  end)

  it("gives function rules a fresh req with token, headers and arguments", function()
    local p = assert(load_src([[
return {
  scopes = { a = "A", b = "B" },
  tools = {
    who = function(req)
      if req.token == nil then return { deny = "anonymous" } end
      local t = req.token
      return { deny = table.concat({ t.sub, t.client_id, tostring(t.scopes.a), tostring(t.scopes.zz),
        t.claims.tenant, tostring(t.expires_at), req.headers["x-tenant"], req.protocol_version,
        req.method, req.name, req.phase, tostring(req.arguments.n), req.arguments.list[2] }, " ") }
    end,
    fresh = function(req)
      if req.mark then return false end
      req.mark = true
      return "a"
    end,
  },
}
]]))
    local d = p:decide { method = "tools/call", name = "who", arguments_json = '{"n": 3, "list": ["x", "y"]}',
      protocol_version = "2025-06-18", headers = { ["X-Tenant"] = "acme" },
      token = { sub = "alice", client_id = "cli", scopes = { "a", "b" },
                claims_json = '{"tenant": "t1"}', exp = 1700000000 } }
    assert.equal('{ deny = "alice cli true nil t1 1700000000 acme 2025-06-18 tools/call who call 3 y" }', d.requirement)
    assert.equal('{ deny = "anonymous" }', p:decide { method = "tools/call", name = "who" }.requirement)
    for _ = 1, 3 do
      assert.equal('"a"', p:decide { method = "tools/call", name = "fresh" }.requirement)
    end
    p:close()
  end)

  it("gives function rules the tool's MCP annotations as req.annotations", function()
    local p = assert(load_src([[
return {
  scopes = { r = "R", w = "W" },
  default = function(req)
    local a = req.annotations
    if a == nil then return { deny = "unclassified" } end
    return a.readOnlyHint and "r" or "w"
  end,
}
]]))
    local function req(phase, ann)
      return p:decide { phase = phase, method = phase == "list" and "tools/list" or "tools/call",
        name = "t", annotations_json = ann }.requirement
    end
    assert.equal('"r"', req("call", '{"readOnlyHint": true}'))
    assert.equal('"w"', req("list", '{"readOnlyHint": false}'))
    assert.equal('{ deny = "unclassified" }', req("call", nil))
    p:close()
  end)

  it("reports req.arguments read in the list phase as a policy error", function()
    local p, err, path = load_src([[
return {
  scopes = { a = "A", admin = "Admin" },
  tools = {
    del = function(req)
      if req.arguments.permanent then return "admin" end
      return "a"
    end,
  },
}
]])
    assert(p, err)
    local d = p:decide { phase = "list", method = "tools/list", name = "del" }
    assert.equal("false", d.requirement)
    assert.equal(path .. ":5: tools.del: req.arguments is not available in the list phase "
      .. '(the item is being listed, not called: check req.phase == "call" first)', d.error)
    -- the call phase is fine
    assert.equal('"a"', p:decide { method = "tools/call", name = "del" }.requirement)
    p:close()
    local n, report = core.policy_check(path)
    assert.equal(1, n)
    assert.equal(path .. ":5: error: tools.del: req.arguments is not available in the list phase "
      .. '(the item is being listed, not called: check req.phase == "call" first)\n', report)
  end)

  it("fails closed on bad function results", function()
    local p, err, path = load_src([[
return {
  scopes = { a = "A" },
  tools = {
    nothing = function(req) end,
    unknown = function(req) return "not:declared" end,
    typo = function(req) return { any_off = { "a" } } end,
    boom = function(req) error("kaput") end,
    obj = function(req) error({}) end,
  },
}
]])
    assert(p, err)
    local function fail(name)
      local d = p:decide { method = "tools/call", name = name }
      assert.equal("false", d.requirement)
      return d.error
    end
    local l = function(name) return path .. ":" .. pt.line_of(path, name .. " =") .. ": tools." .. name .. ": " end
    assert.equal(l("nothing") .. 'rule returned an invalid requirement: rule returned nil (expected a requirement: a scope, "public", "authenticated", false or a table with all_of, any_of or deny)', fail("nothing"))
    assert.equal(l("unknown") .. 'rule returned an invalid requirement: scope "not:declared" is not declared by this policy (list it in `scopes`)', fail("unknown"))
    assert.equal(l("typo") .. 'rule returned an invalid requirement: unknown key "any_off" in requirement (expected all_of, any_of or deny)', fail("typo"))
    assert.equal(l("boom") .. "kaput", fail("boom"))
    assert.equal(l("obj") .. "error raised with a table value", fail("obj"))
    p:close()
    local n = core.policy_check(path)
    assert.equal(5, n)
  end)

  it("keeps no state between calls", function()
    local p = assert(load_src([[
calls = 0
return {
  tools = {
    count = function(req)
      calls = calls + 1
      return calls > 1 and "public" or false
    end,
  },
}
]]))
    for _ = 1, 2 do
      local d = p:decide { method = "tools/call", name = "count" }
      assert.equal("false", d.requirement)
      assert.matches(":5: tools%.count: policy rules may not set globals %(calls%)$", d.error)
    end
    p:close()
  end)
end)

describe("confined require", function()
  local FIX = "tests/fixtures/policies/required.lua"
  local p
  setup(function() p = assert(core.policy_load(FIX)) end)
  teardown(function() p:close() end)
  local function d(name) return p:decide { method = "tools/call", name = name } end

  it("loads modules from the policy directory, once", function()
    assert.equal('"repo:read"', d("read_file").requirement)
    assert.equal('"repo:write"', d("write_file").requirement)
    assert.equal('"repo:read"', d("same_module").requirement)
  end)

  it("refuses ../, absolute paths and missing modules", function()
    assert.matches("require: invalid module name '../secret'", d("parent_dir").error, 1, true)
    assert.matches("require: invalid module name '/etc/passwd'", d("absolute").error, 1, true)
    local e = d("missing").error
    assert.matches("^" .. FIX:gsub("%p", "%%%0") .. ":%d+: tools%.missing: require: module 'no_such_module' not found %(looked in ", e)
    assert.matches("tests/fixtures/policies/no_such_module.lua", e, 1, true)
    -- the shipped library (SG_LUA_DIRS): policies/ (presets) and lua/ (scopegate.testing)
    assert.matches("/policies/no_such_module.lua", e, 1, true)
    assert.matches("/policies/no_such_module/init.lua", e, 1, true)
    assert.matches("/lua/no_such_module.lua", e, 1, true)
    assert.matches("/lua/no_such_module/init.lua", e, 1, true)
    assert.equal("false", d("missing").requirement)
  end)
end)

describe("a 10,000-tool policy", function()
  local dir
  setup(function() dir = pt.tmpdir() end)
  teardown(function() pt.rmdir(dir) end)

  local function make(n)
    local out = { "return {\n  scopes = { ['t:read'] = 'r', ['t:write'] = 'w' },\n  tools = {\n" }
    for i = 1, n do
      if i % 10 == 0 then
        out[#out + 1] = ("    tool_%d = function(req) return 't:write' end,\n"):format(i)
      else
        out[#out + 1] = ("    tool_%d = { any_of = { 't:read', 't:write' } },\n"):format(i)
      end
    end
    out[#out + 1] = "  },\n}\n"
    return pt.write(dir, "tools_" .. n .. ".lua", table.concat(out))
  end

  local function per_call(p, n)
    local names = {}
    for i = 1, 200 do names[i] = "tool_" .. ((i * 7919) % n + 1) end
    local reps = 10
    local best = math.huge
    for _ = 1, 5 do -- best of 5 rounds: the machine is shared
      local t0 = core.policy_clock()
      for _ = 1, reps do
        for i = 1, #names do p:decide { method = "tools/call", name = names[i] } end
      end
      best = math.min(best, (core.policy_clock() - t0) / (reps * #names))
    end
    return best
  end

  it("decides in flat time from 10 to 10,000 tools", function()
    local small = assert(core.policy_load(make(10)))
    local path = make(10000)
    local big, t_load = pt.timed(function() return assert(core.policy_load(path)) end)
    -- 0.5 s in a release build; ASan runs it three to five times slower, and
    -- a shared machine adds its own share.
    assert.is_true(t_load < (procs.sanitizer == "asan" and 6 or 2), "load took " .. t_load)
    assert.equal(path:match("[^/]*$"), big:info().file:match("[^/]*$"))
    local d = big:decide { method = "tools/call", name = "tool_9999" }
    assert.same({ "tools.tool_9999", pt.line_of(path, "tool_9999 ="), '{ any_of = { "t:read", "t:write" } }' },
      { d.rule, d.line, d.requirement })
    assert.equal('"t:write"', big:decide { method = "tools/call", name = "tool_10000" }.requirement)
    local t_small, t_big = per_call(small, 10), per_call(big, 10000)
    assert.is_true(t_big / t_small < 3,
      ("per call: %.2f us with 10 tools, %.2f us with 10,000"):format(t_small * 1e6, t_big * 1e6))
    small:close()
    big:close()
  end)
end)

describe("the policy binding", function()
  it("validates its arguments", function()
    assert.has_error(function() core.policy_load() end)
    assert.has_error(function() core.policy_load(JOURNAL, "fast") end)
    assert.has_error(function() core.policy_load(JOURNAL, { instructions = -1 }) end)
    local p = assert(core.policy_load(JOURNAL))
    assert.has_error(function() p:decide("tools/call") end)
    assert.has_error(function() p:decide {} end, "method is required")
    assert.has_error(function() p:decide { method = "tools/call", phase = "later" } end)
    assert.has_error(function() p:decide { method = "tools/call", arguments_json = "{" } end,
      "arguments_json is not valid JSON")
    assert.has_error(function() p:decide { method = "tools/call", token = { scopes = { 1 } } } end)
    assert.has_error(function() p.decide(42, { method = "x" }) end)
    local req, dynamic = p:tool_requirement("list_entries")
    assert.same({ '"journal:entries:read"', false }, { req, dynamic })
    req, dynamic = p:tool_requirement("delete_entry")
    assert.same({ nil, true }, { req, dynamic })
    p:close()
    assert.has_error(function() p:info() end, "policy is closed")
    p:close() -- twice is fine
  end)
end)
