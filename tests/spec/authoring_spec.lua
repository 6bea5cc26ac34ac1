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
