-- The scope algebra, checked exhaustively against a reference model written
-- here in plain Lua: every subset of granted scopes of a small universe,
-- against a family of requirement shapes, with and without an `implies`
-- hierarchy, for satisfaction, the cheapest step-up set and the decision.
local core = require "scopegate.core"

-- ---- the reference model --------------------------------------------------
local function closure(granted, implies)
  local have, changed = {}, true
  for _, s in ipairs(granted) do have[s] = true end
  while changed do
    changed = false
    for _, e in ipairs(implies) do
      if have[e[1]] and not have[e[2]] then have[e[2]] = true; changed = true end
    end
  end
  return have
end

local function ref_satisfied(r, have, has_token)
  if r == false then return false end
  if r == "public" then return true end
  if r == "authenticated" then return has_token end
  if type(r) == "string" then return has_token and have[r] == true end
  if r[1] == "all" then
    for i = 2, #r do if not ref_satisfied(r[i], have, has_token) then return false end end
    return true
  end
  for i = 2, #r do if ref_satisfied(r[i], have, has_token) then return true end end
  return false
end

-- scopes named by r, depth-first, first appearance only
local function named(r, out, seen)
  out, seen = out or {}, seen or {}
  if type(r) == "string" and r ~= "public" and r ~= "authenticated" then
    if not seen[r] then seen[r] = true; out[#out + 1] = r end
  elseif type(r) == "table" then
    for i = 2, #r do named(r[i], out, seen) end
  end
  return out
end

local function union(a, list)
  local t = {}
  for k in pairs(a) do t[k] = true end
  for _, s in ipairs(list) do t[s] = true end
  return t
end

-- The specification of "cheapest": fewest scopes, drawn only from those the
-- requirement names and the caller lacks; among equally small sets, the one
-- whose sorted positions (in depth-first naming order) compare lowest.
local function ref_stepup(r, granted, implies)
  local have = closure(granted, implies)
  if ref_satisfied(r, have, true) then return {} end
  local cands = {}
  for _, s in ipairs(named(r)) do if not have[s] then cands[#cands + 1] = s end end
  local best, best_pos
  for mask = 1, (1 << #cands) - 1 do
    local pick, pos = {}, {}
    for i = 1, #cands do
      if mask & (1 << (i - 1)) ~= 0 then pick[#pick + 1] = cands[i]; pos[#pos + 1] = i end
    end
    local all = {}
    for _, s in ipairs(granted) do all[#all + 1] = s end
    for _, s in ipairs(pick) do all[#all + 1] = s end
    if ref_satisfied(r, closure(all, implies), true) then
      local better = not best or #pos < #best_pos
      if best and #pos == #best_pos then
        for i = 1, #pos do
          if pos[i] ~= best_pos[i] then better = pos[i] < best_pos[i]; break end
        end
      end
      if better then best, best_pos = pick, pos end
    end
  end
  return best -- nil: unsatisfiable
end

local function canon(list)
  local t = {}
  for _, s in ipairs(list) do t[#t + 1] = s end
  table.sort(t)
  return table.concat(t, " ")
end

-- ---- the universe of cases ------------------------------------------------
local U = { "a", "b", "c", "d" }
local leaves = { "a", "b", "c", "d", "public", "authenticated", false }

local function shapes()
  local out = {}
  for _, x in ipairs(leaves) do out[#out + 1] = x end
  for _, op in ipairs { "all", "any" } do
    for _, x in ipairs(leaves) do
      for _, y in ipairs(leaves) do out[#out + 1] = { op, x, y } end
    end
    out[#out + 1] = { op, "a", "b", "c", "d" }
  end
  local scopes = { "a", "b", "c", "d" }
  for _, x in ipairs(scopes) do
    for _, y in ipairs(scopes) do
      for _, z in ipairs(scopes) do
        out[#out + 1] = { "any", { "all", x, y }, z }
        out[#out + 1] = { "all", { "any", x, y }, z }
        out[#out + 1] = { "any", { "all", x, y }, { "all", z, "d" } }
        out[#out + 1] = { "all", { "any", x, y }, { "any", z, "a" } }
      end
    end
  end
  out[#out + 1] = { "any", { "all", "a", false }, "c" }
  out[#out + 1] = { "all", { "any", false, false }, "c" }
  out[#out + 1] = { "any", { "all", { "any", "a", "b" }, "c" }, { "all", "d", { "any", "b", "c" } } }
  return out
end

local function subsets(list)
  local out = {}
  for mask = 0, (1 << #list) - 1 do
    local s = {}
    for i = 1, #list do if mask & (1 << (i - 1)) ~= 0 then s[#s + 1] = list[i] end end
    out[#out + 1] = s
  end
  return out
end

local function show(r)
  if type(r) ~= "table" then return tostring(r) end
  local parts = {}
  for i = 2, #r do parts[#parts + 1] = show(r[i]) end
  return r[1] .. "(" .. table.concat(parts, ",") .. ")"
end

local hierarchies = {
  none = {},
  chain = { { "d", "c" }, { "c", "b" } },  -- d => c => b
  fan = { { "a", "b" }, { "a", "c" } },     -- a => b, a => c
}

describe("scope algebra", function()
  for hname, implies in pairs(hierarchies) do
    it("matches the reference model exhaustively (" .. hname .. " hierarchy)", function()
      local u = core.universe(U, implies)
      local cases = 0
      for _, r in ipairs(shapes()) do
        for _, granted in ipairs(subsets(U)) do
          local have = closure(granted, implies)
          for _, has_token in ipairs { true, false } do
            local want = ref_satisfied(r, has_token and have or {}, has_token)
            local got = u:satisfied(r, has_token and granted or {}, has_token)
            if got ~= want then
              error(("satisfied(%s, {%s}, token=%s): got %s want %s"):format(
                show(r), table.concat(granted, " "), tostring(has_token), tostring(got), tostring(want)))
            end
            cases = cases + 1
          end
          local want = ref_stepup(r, granted, implies)
          local got = u:stepup(r, granted)
          local want_s = want and canon(want) or nil
          if got ~= want_s then
            error(("stepup(%s, {%s}): got %s want %s"):format(
              show(r), table.concat(granted, " "), tostring(got), tostring(want_s)))
          end
        end
      end
      assert.is_true(cases > 5000)
    end)
  end

  it("computes the closure of implies transitively", function()
    local u = core.universe(U, hierarchies.chain)
    assert.equal("b c d", u:effective { "d" })
    assert.equal("a b", u:effective { "a", "b" })
    assert.equal("", u:effective {})
  end)

  it("prefers the scope named first when sets tie", function()
    local u = core.universe(U)
    assert.equal("b", u:stepup({ "any", "b", "a" }, {}))
    assert.equal("a", u:stepup({ "any", "a", "b" }, {}))
    -- all_of(read, write) with write => read: one scope is enough
    local h = core.universe({ "read", "write" }, { { "write", "read" } })
    assert.equal("write", h:stepup({ "all", "read", "write" }, {}))
  end)

  it("is exact beyond small sets and minimal for large ones", function()
    local names = {}
    for i = 1, 40 do names[i] = ("s%02d"):format(i) end
    local u = core.universe(names)
    local any = { "any" }
    for i = 1, 40 do any[#any + 1] = names[i] end
    assert.equal("s01", u:stepup(any, {}))
    local all = { "all" }
    for i = 1, 40 do all[#all + 1] = names[i] end
    local got = u:stepup(all, { "s05" })
    local n = 0
    for _ in got:gmatch("%S+") do n = n + 1 end
    assert.equal(39, n)
    assert.is_nil(got:find("s05", 1, true))
  end)

  it("validates RFC 6749 scope tokens", function()
    for _, good in ipairs { "a", "journal:entries:read", "!#[]~", ("x"):rep(256) } do
      assert.is_true(core.scope_token_valid(good), good)
    end
    for _, bad in ipairs { "", "a b", 'a"b', "a\\b", "a\tb", "\127", "é", ("x"):rep(257), "a\0b" } do
      assert.is_false(core.scope_token_valid(bad), bad)
    end
    assert.has_error(function() core.universe { "bad scope" } end)
  end)

  it("describes requirements deterministically", function()
    local u = core.universe { "photos:read", "photos:write", "albums:read", "admin" }
    assert.equal("At least one of: photos:read photos:write albums:read is required.",
      u:describe { "any", "photos:read", "photos:write", "albums:read" })
    assert.equal("All of: photos:read admin are required.", u:describe { "all", "photos:read", "admin" })
    assert.equal("Scope admin is required.", u:describe "admin")
    assert.equal("Scope admin is required.", u:describe { "all", "admin" })
    assert.equal("Required: admin or (photos:read and photos:write).",
      u:describe { "any", "admin", { "all", "photos:read", "photos:write" } })
    assert.equal("All of: admin photos:write are required (permanent deletion).",
      u:describe({ "all", "admin", "photos:write" }, "permanent deletion"))
    assert.equal("Denied by policy.", u:describe(false))
  end)
end)

describe("decisions and challenges", function()
  local RM = "https://journal.example.com/.well-known/oauth-protected-resource/mcp"
  local u = core.universe({ "j:read", "j:write", "j:admin", "offline_access", "other" },
    { { "j:admin", "j:write" }, { "j:write", "j:read" } })

  it("allows a satisfied requirement and public without a token", function()
    assert.equal("allow", u:decide("j:read", { "j:write" }).outcome)
    local d = u:decide("public", nil)
    assert.equal(200, d.status)
    assert.is_nil(d.challenge)
  end)

  it("answers 401 without a token, naming the cheapest scopes", function()
    local d = u:decide({ "any", "j:read", "j:write" }, nil, nil, "journal", RM)
    assert.equal(401, d.status)
    assert.equal('Bearer realm="journal", scope="j:read", resource_metadata="' .. RM .. '"', d.challenge)
    assert.equal("Authorization required. At least one of: j:read j:write is required.", d.message)
  end)

  it("answers 401 invalid_token for a refused token, even on a public rule", function()
    local d = u:decide("public", nil, "token expired", nil, RM)
    assert.equal(401, d.status)
    assert.equal('Bearer error="invalid_token", resource_metadata="' .. RM ..
      '", error_description="token expired"', d.challenge)
    assert.equal("Invalid access token: token expired. No token is required.", d.message)
    d = u:decide("j:read", nil, "The token has expired.", nil, RM)
    assert.equal("Invalid access token: The token has expired. Scope j:read is required.", d.message)
  end)

  it("answers 403 insufficient_scope with granted plus the step-up, byte for byte", function()
    local d = u:decide({ "all", "j:admin" }, { "other", "j:read", "unknown" }, nil, "journal", RM)
    assert.equal(403, d.status)
    assert.equal("forbidden", d.outcome)
    assert.equal('Bearer realm="journal", error="insufficient_scope", scope="j:admin j:read other", ' ..
      'resource_metadata="' .. RM .. '", error_description="Scope j:admin is required."', d.challenge)
    -- the same inputs give the same bytes, whatever the token's scope order
    local again = u:decide({ "all", "j:admin" }, { "unknown", "j:read", "other" }, nil, "journal", RM)
    assert.equal(d.challenge, again.challenge)
  end)

  it("never asks for offline_access in a challenge", function()
    local d = u:decide("j:write", { "offline_access", "j:read" }, nil, nil, RM)
    assert.equal(403, d.status)
    assert.matches('scope="j:read j:write"', d.challenge, 1, true)
  end)

  it("denies without a step-up hint when no scope can help", function()
    local d = u:decide({ "any", false, { "all", "j:read", false } }, { "j:read" })
    assert.equal(403, d.status)
    assert.equal("denied", d.outcome)
    assert.is_nil(d.challenge)
    assert.equal(403, u:decide(false, nil).status)
  end)

  it("keeps header syntax out of every quoted value", function()
    local h = core.challenge {
      realm = 'a"b\\c\r\nX-Evil: 1', error = "insufficient_scope",
      scope = 'a" b', resource_metadata = "https://x/\"y", error_description = "caf\195\169 \"ok\"",
    }
    assert.equal([[Bearer realm="a'b/c??X-Evil: 1", error="insufficient_scope", ]] ..
      [[resource_metadata="https://x/'y", error_description="caf?? 'ok'"]], h)
    assert.is_nil(h:find("[\r\n]"))
    assert.equal('Bearer', core.challenge {})
    local long = core.challenge { error_description = ("x"):rep(5000) }
    assert.equal(#'Bearer error_description=""' + 512, #long)
  end)

  it("writes every byte of a quoted value as the rule says, up to the 512th", function()
    for b = 1, 255 do
      local want = (b == 34 and "'") or (b == 92 and "/") or ((b < 32 or b > 126) and "?")
                   or string.char(b)
      assert.equal('Bearer realm="a' .. want .. 'b"', core.challenge { realm = "a" .. string.char(b) .. "b" },
                   "byte " .. b)
    end
    -- runs and replacements meeting the cut
    local v = ("x"):rep(510) .. '"\\' .. "yz"
    assert.equal('Bearer realm="' .. ("x"):rep(510) .. "'/" .. '"', core.challenge { realm = v })
    v = ("x"):rep(511) .. '"y'
    assert.equal('Bearer realm="' .. ("x"):rep(511) .. "'" .. '"', core.challenge { realm = v })
  end)
end)
