-- lint_spec.lua -- `scopegate check`'s lint codes, run as the real binary.
--
-- For every code documented in docs/policy.md ("Lint codes") there is a
-- failing and a clean policy in tests/fixtures/lint/: <code>.bad.lua must
-- produce exactly the golden <code>.bad.txt (text) and <code>.bad.json
-- (--format json), with findings of that code only, exit 0, and exit 1 under
-- --strict; <code>.good.lua must be clean in both formats, even with --strict.
-- SG_UPDATE_GOLDEN=1 rewrites the goldens (review the diff before committing).
local K = require "keys"

local BIN = os.getenv("SG_BUILD_DIR") .. "/scopegate"
local DIR = "tests/fixtures/lint/"
local UPDATE = os.getenv("SG_UPDATE_GOLDEN") == "1"

local CODES = {
  "scope-per-tool", "scope-env-word", "scope-oidc", "scope-write-without-read",
  "scope-unused", "scope-not-advertised", "public-write-tool", "default-public",
  "scope-undeclared",
}

-- Runs the binary; returns stdout, stderr and the exit code.
local procs = require "procs"
local function sg(args, stdin) return procs.run(BIN, args, stdin) end

-- Parses a JSON document with python3 (an independent parser) and returns
-- "errors warnings code,code,..." (codes sorted, deduplicated, one per line
-- of findings: "file|line|severity|code" in order).
local function json_summary(doc)
  local dir = K.tmpdir()
  K.write(dir .. "/doc.json", doc)
  local out = K.run("python3 -c " .. K.q([[
import json, sys
d = json.load(open(sys.argv[1]))
assert set(d) == {"file", "errors", "warnings", "findings"}, sorted(d)
print(d["file"], d["errors"], d["warnings"])
for f in d["findings"]:
    assert set(f) == {"file", "line", "severity", "code", "message"}, sorted(f)
    assert isinstance(f["line"], int) and f["line"] >= 1
    print("%s|%d|%s|%s" % (f["file"], f["line"], f["severity"], f["code"]))
]]) .. " " .. K.q(dir .. "/doc.json"))
  os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
  return out
end

local function golden(path, actual)
  if UPDATE then K.write(path, actual) end
  local ok, expected = pcall(K.read, path)
  assert(ok, "missing golden " .. path .. " (SG_UPDATE_GOLDEN=1 writes it)")
  assert.equal(expected, actual)
end

-- s as a Lua pattern that matches it literally.
local function esc(s)
  return (s:gsub("%p", "%%%0"))
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("scopegate check lint codes", function()
  for _, code in ipairs(CODES) do
    local bad, good = DIR .. code .. ".bad.lua", DIR .. code .. ".good.lua"

    describe(code, function()
      it("reports the failing example exactly (text), with this code only", function()
        local out, err, rc = sg("check " .. bad)
        assert.equal(0, rc, out .. err)
        golden(DIR .. code .. ".bad.txt", out)
        local l = lines(out)
        assert.is_true(#l >= 2, "no finding for " .. bad)
        for i = 1, #l - 1 do
          assert.matches("^" .. esc(bad) .. ":%d+: warning: .* %[" .. esc(code) .. "%]$", l[i])
        end
        assert.equal(bad .. ": ok", l[#l])
      end)

      it("reports the failing example exactly (--format json)", function()
        local out, _, rc = sg("check --format json " .. bad)
        assert.equal(0, rc)
        golden(DIR .. code .. ".bad.json", out)
        local summary = lines(json_summary(out))
        local n = #lines(K.read(DIR .. code .. ".bad.txt")) - 1
        assert.equal(bad .. " 0 " .. n, summary[1])
        assert.equal(n + 1, #summary)
        for i = 2, #summary do
          assert.matches("^" .. esc(bad) .. "|%d+|warning|" .. esc(code) .. "$", summary[i])
        end
      end)

      it("fails the failing example under --strict, in both formats", function()
        local out, _, rc = sg("check --strict " .. bad)
        assert.equal(1, rc)
        assert.matches(esc(bad) .. ": %d+ warnings? %(failing: %-%-strict%)\n$", out)
        local _, _, rc2 = sg("check --format json --strict " .. bad)
        assert.equal(1, rc2)
      end)

      it("passes the clean example, even under --strict", function()
        local out, err, rc = sg("check --strict " .. good)
        assert.equal(0, rc, out .. err)
        assert.equal(good .. ": ok\n", out)
        local doc, _, rc2 = sg("check --strict --format json " .. good)
        assert.equal(0, rc2)
        assert.equal(good .. " 0 0\n", json_summary(doc))
      end)
    end)
  end
end)

describe("scopegate check lint codes, documented", function()
  it("has a docs/policy.md row for every code and a code for every row", function()
    local doc = K.read("docs/policy.md")
    local section = doc:match("\n## Lint codes\n(.-)\n## ")
    assert.is_truthy(section, "docs/policy.md has no '## Lint codes' section")
    local documented = {}
    for row in section:gmatch("\n| `([%w%-]+)` |") do documented[row] = true end
    for _, code in ipairs(CODES) do
      assert.is_true(documented[code], code .. " is not documented")
      documented[code] = nil
    end
    documented["policy-error"], documented["policy-warning"] = nil, nil
    assert.same({}, documented)
  end)
end)

describe("scopegate check output", function()
  it("keeps the shipped examples clean under --strict", function()
    for _, p in ipairs { "policies/examples/journal.lua", "policies/examples/minimal.lua" } do
      local out, _, rc = sg("check --strict " .. p)
      assert.equal(0, rc, out)
      assert.equal(p .. ": ok\n", out)
    end
  end)

  it("reports load errors as policy-error and exits 1 in both formats", function()
    local dir = K.tmpdir()
    local path = dir .. "/broken.lua"
    K.write(path, 'return {\n  scopes = { ["a:read"] = "r" },\n  tools = { x = { al_of = { "a:read" } } },\n}\n')
    local out, _, rc = sg("check " .. path)
    local doc, _, rc2 = sg("check --format json " .. path)
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.equal(1, rc)
    assert.matches(path .. ':3: error: tools.x: unknown key "al_of"', out, 1, true)
    assert.is_nil(out:find(": ok", 1, true))
    assert.equal(1, rc2)
    assert.equal(path .. " 1 0\n" .. path .. "|3|error|policy-error\n", json_summary(doc))
  end)

  it("waives a warning with a scopegate-lint comment naming its code, and only that", function()
    local dir = K.tmpdir()
    local src = K.read(DIR .. "scope-env-word.bad.lua")
    local waived = src:gsub('(%["journal:entries:read:prod"%] = "[^"]*",)',
      "%1 -- scopegate-lint: ignore scope-unused, scope-env-word")
      :gsub('(\n)(    %["staging%.entries%.write"%])', "%1    -- scopegate-lint: ignore scope-env-word\n%2")
      :gsub('(dev_tools +=)', "%1 -- scopegate-lint: ignore scope-oidc\n")
    K.write(dir .. "/p.lua", waived)
    local out, _, rc = sg("check --strict " .. dir .. "/p.lua")
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.equal(1, rc)
    local l = lines(out)
    assert.equal(2, #l, out)
    assert.matches('scope "dev_tools" names an environment', l[1], 1, true)
  end)

  it("sees the scopes a function rule from a module returns, in any phase", function()
    local dir = K.tmpdir()
    os.execute(K.CLEAN .. "mkdir -p " .. K.q(dir .. "/lib"))
    K.write(dir .. "/lib/rules.lua", 'local M = {}\nfunction M.del(req)\n  if req.phase == "call" then return "n:admin" end\n  return "n:write"\nend\nreturn M\n')
    K.write(dir .. "/p.lua", 'local rules = require "lib.rules"\nreturn {\n  scopes = { ["n:read"] = "r", ["n:write"] = "w", ["n:admin"] = "a", ["n:old"] = "o" },\n' ..
      '  implies = { ["n:write"] = { "n:read" }, ["n:admin"] = { "n:write" } },\n  tools = { del = rules.del, get = \"n:read\" },\n  default = "deny",\n}\n')
    local out, _, rc = sg("check " .. dir .. "/p.lua")
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.equal(0, rc)
    local l = lines(out)
    assert.equal(2, #l, out)
    assert.matches(':3: warning: scopes: scope "n:old" is declared but no rule requires it', l[1], 1, true)
  end)

  it("refuses an unknown --format with exit 2", function()
    local _, err, rc = sg("check --format yaml policies/examples/minimal.lua")
    assert.equal(2, rc)
    assert.matches("--format takes text or json, not 'yaml'", err, 1, true)
  end)
end)
