-- uri_spec.lua -- the resource URI normaliser (src/base/uri.c) through
-- core.uri_normalize: RFC 3986 section 6.2.2 (case, percent-encoding,
-- dot segments) and what it refuses.
local core = require "scopegate.core"

local function norm(s) return core.uri_normalize(s) end

describe("uri_normalize", function()
  it("leaves a URI in normal form as it is", function()
    for _, u in ipairs {
      "journal://entries/1", "file:///home/u/notes.txt", "echo://docs/1?x=1#f", "urn:isbn:0451450523",
      "journal://entries/", "journal://entries", "db://h/a%20b", "s3://bucket/%C3%A9t%C3%A9",
      "file:///a//b", "mailto:a@example.com", "ui://widget/{id}", "file:///a b.txt",
      "u", "entries/1", "/abs/path", "", "a/b:c", "x://h/caf\xC3\xA9",
    } do
      assert.are.equal(u, norm(u))
    end
  end)

  it("lower-cases the scheme and the host, not userinfo, path or query", function()
    assert.are.equal("journal://entries/A", norm("JOURNAL://Entries/A"))
    assert.are.equal("http://User@example.com:8080/P?Q", norm("HTTP://User@EXAMPLE.com:8080/P?Q"))
    assert.are.equal("http://[ab::1]:80/", norm("http://[AB::1]:80/"))
  end)

  it("upper-cases percent-encodings and decodes unreserved characters", function()
    assert.are.equal("db://h/%C3%A9", norm("db://h/%c3%a9"))
    assert.are.equal("db://h/~user/a-b_c.d", norm("db://h/%7Euser/%61%2D%62%5f%63%2e%64"))
    assert.are.equal("db://h/a%20b%3F", norm("db://h/a%20b%3f"))
    assert.are.equal("db://h/%25", norm("db://h/%25"))
  end)

  it("removes dot segments (RFC 3986 section 5.2.4)", function()
    local cases = {
      ["file:///a/b/c/./../../g"] = "file:///a/g",
      ["file:///a/./b"] = "file:///a/b",
      ["file:///a/b/.."] = "file:///a/",
      ["file:///a/b/."] = "file:///a/b/",
      ["file:///a//../b"] = "file:///a/b",
      ["journal://entries/x/../admin"] = "journal://entries/admin",
      ["journal://entries/x/%2e%2E/y"] = "journal://entries/y",
      ["journal://entries/x/.%2e/y"] = "journal://entries/y",
      ["file:///a/..b/c"] = "file:///a/..b/c",
      ["file:///a/.../c"] = "file:///a/.../c",
      ["file:///a/b?x=../../c"] = "file:///a/b?x=../../c",
      ["urn:a/../b"] = "urn:b",
      ["entries/x/../1"] = "entries/1",
      ["/a/./b/%7E"] = "/a/b/~",
    }
    for input, want in pairs(cases) do assert.are.equal(want, norm(input), input) end
  end)

  it("refuses what cannot be normalised unambiguously", function()
    local cases = {
      ["journal://entries/../../admin"] = "climbs above the root",
      ["journal://entries/%2e%2e/admin"] = "climbs above the root",
      ["file:///.."] = "climbs above the root",
      ["file:///a/../../b"] = "climbs above the root",
      ["urn:.."] = "climbs above the root",
      ["file:///a%2Fb"] = "encoded '/'",
      ["file:///a%2fb"] = "encoded '/'",
      ["file:///a%00b"] = "encoded NUL",
      ["file:///a%5Cb"] = "encoded '\\'",
      ["file:///a\\..\\b"] = "'\\'",
      ["file:///a%zz"] = "not followed by two hexadecimal digits",
      ["file:///a%4"] = "not followed by two hexadecimal digits",
      ["file:///a%"] = "not followed by two hexadecimal digits",
      ["file:///a\tb"] = "control character",
      ["file:///a\nb"] = "control character",
      ["1abc:x"] = "no valid scheme",
      ["a/../.."] = "climbs above the root",
      ["caf\xC3\xA9://x"] = "no valid scheme",
      ["../x"] = "climbs above the root",
      ["x:/a/..//b"] = "begin with \"//\"",
    }
    for input, want in pairs(cases) do
      local out, why = norm(input)
      assert.is_nil(out, input)
      assert.truthy(why and why:find(want, 1, true), input .. ": " .. tostring(why))
    end
  end)

  it("is idempotent", function()
    for _, u in ipairs { "FILE:///A/%7e/./b/../c%2a", "journal://E/x/%2E/y/", "urn:X:%61" } do
      local once = assert(norm(u))
      assert.are.equal(once, norm(once))
    end
  end)
end)

describe("mcp_parse and resource URIs", function()
  local function parse(method, uri)
    local body = string.format('{"jsonrpc":"2.0","id":1,"method":%q,"params":{"uri":%q}}', method, uri)
    local r, code, msg = core.mcp_parse(body)
    if not r then return code, msg end
    local m = r.messages[1]
    return m.code, m.message, m
  end

  it("refuses every resource method's URI that is not in normal form", function()
    for _, method in ipairs { "resources/read", "resources/subscribe", "resources/unsubscribe" } do
      local code, msg = parse(method, "journal://entries/../../admin")
      assert.are.equal(core.mcp_codes.invalid_params, code, method)
      assert.are.equal('Invalid params: "params.uri" has no unambiguous normal form: its path ' ..
                       'climbs above the root with ".."', msg)
      code, msg = parse(method, "Journal://entries/%7e")
      assert.are.equal(core.mcp_codes.invalid_params, code, method)
      assert.are.equal('Invalid params: "params.uri" is not in normal form (RFC 3986 section ' ..
                       '6.2.2); its normal form is "journal://entries/~"', msg)
      local _, _, m = parse(method, "journal://entries/~")
      assert.are.equal("request", m.kind)
      assert.are.equal("journal://entries/~", m.name)
    end
  end)
end)
