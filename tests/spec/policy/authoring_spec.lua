-- tests/spec/policy/authoring_spec.lua -- what a policy author trips over (issue 7,
-- items 5 and 6), through the real C code via scopegate.core: reserved words
-- as scope names, resource templates as keys, scopes hidden in function
-- rules, when protocol plumbing is public, and the descriptions a caller
-- reads in error_description.
local pt = require "policytest"
local core = pt.core

local dir
local function load_src(src)
  local path = pt.write(dir, "p.lua", src)
  local p, err = core.policy_load(path)
  return p, err, path
end

describe("reserved words", function()
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  it("refuses public, authenticated and deny as scope names, with file:line", function()
    local p, err, path = load_src([[
return {
  scopes = {
    public = "everyone",
    ["ok:read"] = "fine",
  },
  advertise = { "deny" },
  implies = {
    ["ok:read"] = { "authenticated" },
  },
}
]])
    assert.is_nil(p)
    local want = {
      path .. ':3: scopes: "public" is a reserved word (the requirement for no token at all), not a scope name',
      path .. ':6: advertise: "deny" is a reserved word (the requirement that always refuses), not a scope name',
      path .. ':8: implies: "authenticated" is a reserved word (the requirement for any valid token), not a scope name',
    }
    local got = {}
    for l in err:gmatch("[^\n]+") do got[#got + 1] = l end
    table.sort(got)
    assert.same(want, got)
    local n = core.policy_check(path)
    assert.equal(3, n)
  end)

  it("refuses a reserved word as an implies key", function()
    local p, err, path = load_src('return {\n  scopes = { a = "A" },\n  implies = { public = "a" },\n}\n')
    assert.is_nil(p)
    assert.equal(path .. ':3: implies: "public" is a reserved word (the requirement for no token at all), not a scope name', err)
  end)
end)

describe("descriptions a caller reads", function()
  local RM = "https://journal.example.com/.well-known/oauth-protected-resource/mcp"
  local u = core.universe({ "j:read", "j:write", "j:admin", "a", "b", "c" },
    { { "j:admin", "j:write" }, { "j:write", "j:read" } })

  it("names only the missing scopes in error_description, not those held through implies", function()
    local d = u:decide({ "all", "j:read", "j:admin" }, { "j:write" }, nil, "journal", RM)
    assert.equal(403, d.status)
    assert.equal('Bearer realm="journal", error="insufficient_scope", scope="j:admin j:write", ' ..
      'resource_metadata="' .. RM .. '", error_description="Scope j:admin is required."', d.challenge)
    assert.equal("Scope j:admin is required.", d.message)
    -- an alternative keeps only what each branch still lacks
    d = u:decide({ "any", { "all", "j:read", "a" }, { "all", "j:read", "b" } }, { "j:read" })
    assert.equal("At least one of: a b is required.", d.message)
    -- 401: nothing is held, everything is named
    d = u:decide({ "all", "j:read", "j:admin" }, nil)
    assert.equal("Authorization required. All of: j:read j:admin are required.", d.message)
  end)

  it("describes a batch without repeating itself", function()
    assert.equal("All of: a b are required.", u:describe { "all", "a", { "all", "a", "b" } })
    assert.equal("Scope a is required.", u:describe { "all", "a", "a" })
    -- absorption: a and (a or b) = a; a or (a and b) = a
    assert.equal("Scope a is required.", u:describe { "all", "a", { "any", "a", "b" } })
    assert.equal("Scope a is required.", u:describe { "any", "a", { "all", "a", "b" } })
    assert.equal("Required: (b or c) and a.",
      u:describe { "all", { "any", "b", "c" }, "a", { "any", "b", "c" }, "a" })
    -- public adds nothing to all_of, deny nothing to any_of
    assert.equal("Scope a is required.", u:describe { "all", "public", "a" })
    assert.equal("Scope a is required.", u:describe { "any", false, "a" })
    assert.equal("Denied by policy.", u:describe { "all", false, "a" })
  end)
end)

describe("resource templates as keys (RFC 6570)", function()
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  local SRC = [[
return {
  scopes = { a = "A", b = "B", c = "C", d = "D" },
  resources = {
    ["calendar://{id}"] = "a",
    ["calendar://*"] = "b",
    ["files://{+path}"] = "c",
    ["mail://{box}/{id}"] = "d",
  },
}
]]

  it("{var} matches one path segment, {+var} any text, templates beat * at equal literal", function()
    local p = assert(load_src(SRC))
    local function req(uri, phase)
      return p:decide { phase = phase, method = "resources/read", name = uri }.requirement
    end
    assert.equal('"a"', req("calendar://42"))
    assert.equal('"b"', req("calendar://42/attendees")) -- {id} stops at '/', * does not
    assert.equal('"b"', req("calendar://42?x=1"))
    assert.equal('"b"', req("calendar://"))              -- {id} needs one byte at least
    assert.equal('"c"', req("files://etc/hosts"))
    assert.equal("false", req("files://"))
    assert.equal('"d"', req("mail://inbox/7"))
    assert.equal("false", req("mail://inbox/7/raw"))
    -- a resources/templates/list item is decided by its uriTemplate: the key itself
    assert.equal('"a"', req("calendar://{id}", "list"))
    assert.equal('"c"', req("files://{+path}", "list"))
    assert.equal("resources.calendar://{id}", p:decide { method = "resources/read", name = "calendar://1" }.rule)
    p:close()
  end)

  it("refuses other template expressions with a hint and file:line", function()
    local p, err, path = load_src([[
return {
  scopes = { a = "A" },
  resources = {
    ["search://{?q}"] = "a",
  },
}
]])
    assert.is_nil(p)
    assert.equal(path .. ':4: resources.search://{?q}: unsupported URI template expression "{?q}" in ' ..
      "resource key (keys take RFC 6570 {name}, one path segment, and {+name}, any text across '/'; " ..
      "write * for anything else)", err)
    for _, bad in ipairs { "x://{a,b}", "x://{a:3}", "x://{a*}", "x://{}", "x://{/a}" } do
      p, err = load_src('return { scopes = { a = "A" }, resources = { ["' .. bad .. '"] = "a" } }')
      assert.is_nil(p, bad)
      assert.matches("unsupported URI template expression", err, 1, true)
    end
    p, err = load_src('return { scopes = { a = "A" }, resources = { ["x://{id"] = "a" } }')
    assert.matches("unclosed '{' in resource template \"x://{id\"", err, 1, true)
    p, err = load_src('return { scopes = { a = "A" }, resources = { ["x://id}"] = "a" } }')
    assert.matches("'}' without '{' in resource template", err, 1, true)
  end)

  it("refuses resource keys not in RFC 3986 normal form (they would never match)", function()
    local p, err, path = load_src('return { scopes = { a = "A" }, resources = {\n' ..
                                  '  ["Journal://entries/x/../%7e*"] = "a" } }')
    assert.is_nil(p)
    assert.equal(path .. ':2: resources.Journal://entries/x/../%7e*: resource key ' ..
      '"Journal://entries/x/../%7e*" is not in RFC 3986 normal form, so it would never match ' ..
      '(URIs are matched in normal form): write "journal://entries/~*"', err)
    for bad, why in pairs { ["file:///../x"] = "climbs above the root", ["x://a%2Fb"] = "encoded '/'",
                            ["file:///a/./b"] = "normal form", ["x://a/%zz*"] = "hexadecimal" } do
      p, err = load_src('return { scopes = { a = "A" }, resources = { ["' .. bad .. '"] = "a" } }')
      assert.is_nil(p, bad)
      assert.matches(why, err, 1, true)
    end
    for _, good in ipairs { "*", "*://x/../y", "x://a/*", "journal://entries/%C3%A9", "docs/1" } do
      assert(load_src('return { scopes = { a = "A" }, resources = { ["' .. good .. '"] = "a" } }'))
    end
  end)

  it("matches in time linear in the URI, whatever the template", function()
    local p = assert(load_src([[
return { scopes = { a = "A" }, resources = { ["x://{+a}{+b}{+c}{+d}{+e}{+f}/end"] = "a" } }
]]))
    local uri = "x://" .. ("ab/"):rep(100000)
    local d, t = pt.timed(function() return p:decide { method = "resources/read", name = uri } end)
    assert.equal("false", d.requirement)
    assert.is_true(t < 1, "took " .. t .. " s")
    p:close()
  end)
end)

describe("scopes in function rules", function()
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  local SRC = [[
return {
  scopes = { ["notes:read"] = "r", ["notes:write"] = "w", ["notes:admin"] = "a" },
  tools = {
    delete_note = function(req)
      if req.phase == "call" and req.arguments.everything then
        return { all_of = { "notes:admn" }, why = "bulk" }   -- typo, call phase only
      end
      if req.token and req.token.scopes["notes:admin"] then return "notes:write" end
      return req.headers["x-mode"] == "fast" and "notes:read" or { deny = "slow" }
    end,
    lookup = function(req)
      local need = "notes:admin"
      return string.format("%s", need) == "x" and "public" or "notes:read"
    end,
  },
  default = function(req) if req.method == "x/y" then return ("notes:wirte") end return false end,
}
]]

  it("warns (check) about an undeclared scope constant in a return, with its line", function()
    local path = pt.write(dir, "p.lua", SRC)
    local n, report = core.policy_check(path)
    assert.equal(0, n, report)
    assert.matches(path .. ":6: warning: tools.delete_note: scope \"notes:admn\" returned by this " ..
      "function is not declared (a typo? returning it would be a policy error; list it in `scopes`)\n",
      report, 1, true)
    assert.matches(path .. ":16: warning: default: scope \"notes:wirte\" returned", report, 1, true)
    -- nothing else: comparisons, indexes, call arguments, why/deny texts are not scopes
    local count = select(2, report:gsub("warning:", ""))
    assert.equal(2, count, report)
  end)

  it("exposes every scope a function rule can return (policy:info().function_scopes)", function()
    local p = assert(load_src(SRC))
    local got = {}
    for _, u in ipairs(p:info().function_scopes) do
      got[#got + 1] = table.concat({ u.rule, u.scope, u.line, tostring(u.returned), tostring(u.known) }, " ")
    end
    table.sort(got)
    assert.same({
      "default notes:wirte 16 true false",
      "tools.delete_note notes:admin 8 false true",
      "tools.delete_note notes:admn 6 true false",
      "tools.delete_note notes:read 9 true true",
      "tools.delete_note notes:write 8 true true",
      "tools.lookup notes:admin 12 false true",
      "tools.lookup notes:read 13 true true",
    }, got)
    p:close()
  end)

  it("scans functions defined in a required module, naming the module's file", function()
    pt.write(dir, "lib/rules.lua", 'local M = {}\nfunction M.admin(req)\n  if req.phase == "call" then return "notes:admni" end\n  return "notes:admin"\nend\nreturn M\n')
    local path = pt.write(dir, "p.lua", [[
local rules = require "lib.rules"
return { scopes = { ["notes:admin"] = "a" }, tools = { purge = rules.admin } }
]])
    local n, report = core.policy_check(path)
    assert.equal(0, n, report)
    assert.matches(dir .. "/lib/rules.lua:3: warning: tools.purge: scope \"notes:admni\" returned", report, 1, true)
  end)
end)

describe("protocol plumbing follows what the policy makes public", function()
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  local PLUMBING = { "initialize", "ping", "tools/list", "prompts/list", "resources/list",
                     "resources/templates/list", "notifications/initialized", "completion/complete" }

  local function plumbing(src)
    local p = assert(load_src(src))
    local seen = {}
    for _, m in ipairs(PLUMBING) do
      local d = p:decide { method = m }
      assert.equal("builtin." .. m, d.rule)
      seen[d.requirement] = true
    end
    local public = p:info().has_public_rule
    p:close()
    local only = next(seen)
    assert.is_nil(next(seen, only), "plumbing rules disagree")
    assert.equal(public and '"public"' or '"authenticated"', only)
    return only
  end

  it("is public when default is public", function()
    assert.equal('"public"', plumbing('return { tools = { x = "public" }, default = "public" }'))
    assert.equal('"public"', plumbing('return { default = "public" }'))
    assert.equal('"public"', plumbing('return { scopes = { a = "A" }, tools = { x = "a" }, default = "public" }'))
  end)

  it("is public when any static rule anywhere lets an anonymous caller in", function()
    assert.equal('"public"', plumbing('return { methods = { ["logging/setLevel"] = "public" } }'))
    assert.equal('"public"', plumbing('return { scopes = { a = "A" }, tools = { x = { any_of = { "a", "public" } } } }'))
    assert.equal('"public"', plumbing('return { resources = { ["docs://*"] = "public" } }'))
  end)

  it("is public when a function rule returns the constant \"public\"", function()
    assert.equal('"public"', plumbing([[
return { scopes = { a = "A" },
  tools = { x = function(req) if req.token == nil then return "public" end return "a" end } }
]]))
    assert.equal('"public"', plumbing([[
return { scopes = { a = "A" }, default = function(req) return req.method == "ping" and "public" or "a" end }
]]))
  end)

  it("needs a token otherwise, even when \"public\" appears in a comparison", function()
    assert.equal('"authenticated"', plumbing('return { scopes = { a = "A" }, tools = { x = "a" }, default = "authenticated" }'))
    assert.equal('"authenticated"', plumbing([[
return { scopes = { a = "A" },
  tools = { x = function(req)
    if req.phase == "call" and req.arguments.visibility == "public" then return "a" end
    return { deny = "public only" }
  end } }
]]))
  end)

  it("is overridden by methods", function()
    local p = assert(load_src('return { default = "public", methods = { initialize = "authenticated" } }'))
    assert.equal('"authenticated"', p:decide { method = "initialize" }.requirement)
    assert.equal('"public"', p:decide { method = "ping" }.requirement)
    p:close()
  end)
end)
