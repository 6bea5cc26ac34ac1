-- tests/spec/authoring_spec.lua -- what a policy author trips over (issue 7,
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
