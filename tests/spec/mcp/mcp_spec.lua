-- mcp_spec.lua -- the MCP / JSON-RPC message model (src/base/json.c, src/mcp/mcp.c)
-- through the real C code in scopegate.core.
local core = require "scopegate.core"

local PARSE, INVALID, PARAMS = -32700, -32600, -32602
local MISMATCH = -32020

-- Parses and expects failure; returns code, message, id.
local function fails(body, limits)
  local r, code, msg, id = core.mcp_parse(body, limits)
  assert.is_nil(r, "expected a failure for " .. string.format("%q", body:sub(1, 80)))
  assert.is_number(code)
  assert.is_string(msg)
  return code, msg, id
end

local function ok(body, limits)
  local r, code, msg = core.mcp_parse(body, limits)
  assert(r, ("expected success for %q, got %s %s"):format(body:sub(1, 80), tostring(code), tostring(msg)))
  return r
end

local function single(body)
  local r = ok(body)
  assert.is_false(r.batch)
  assert.equal(1, #r.messages)
  return r.messages[1]
end

local function req(fields)
  return '{"jsonrpc":"2.0"' .. fields .. "}"
end

describe("mcp_parse: classification", function()
  it("parses a tools/call request with exact fields", function()
    local m = single(req [[,"id":1,"method":"tools/call","params":{"name":"delete_entry","arguments":{"id":"e1","permanent":true,"n":3,"x":1.5,"tags":["a","b"],"none":null}}]])
    assert.equal("request", m.kind)
    assert.equal("tools/call", m.method)
    assert.equal("1", m.id_raw)
    assert.equal("delete_entry", m.name)
    assert.is_nil(m.protocol_version)
    assert.same({ id = "e1", permanent = true, n = 3, x = 1.5, tags = { "a", "b" }, none = core.mcp_null }, m.arguments)
    assert.equal(math.type(m.arguments.n), "integer")
    assert.equal(core.mcp_null, m.arguments.none)
  end)

  it("parses a notification (no id)", function()
    local m = single(req [[,"method":"notifications/initialized"]])
    assert.same({ kind = "notification", method = "notifications/initialized" }, m)
  end)

  it("parses result and error responses", function()
    assert.same({ kind = "response", id_raw = '"abc"', error = false }, single(req [[,"id":"abc","result":{"x":1}]]))
    assert.same({ kind = "response", id_raw = "7", error = true },
      single(req [[,"id":7,"error":{"code":-32601,"message":"nope","data":{}}]]))
    -- a response to a request whose id could not be read carries null
    assert.same({ kind = "response", id_raw = "null", error = true },
      single(req [[,"id":null,"error":{"code":-32700,"message":"Parse error"}]]))
  end)

  it("takes name from params.uri for resource methods and keeps prompt arguments", function()
    for _, method in ipairs { "resources/read", "resources/subscribe", "resources/unsubscribe" } do
      local m = single(req((',"id":2,"method":"%s","params":{"uri":"journal://entries/1"}'):format(method)))
      assert.same({ kind = "request", id_raw = "2", method = method, name = "journal://entries/1" }, m)
    end
    local m = single(req [[,"id":3,"method":"prompts/get","params":{"name":"summarize_week","arguments":{"week":"12"}}]])
    assert.same({ kind = "request", id_raw = "3", method = "prompts/get", name = "summarize_week",
      arguments = { week = "12" } }, m)
  end)

  it("reports the protocol version an initialize asks for", function()
    local m = single(req [[,"id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}]])
    assert.same({ kind = "request", id_raw = "0", method = "initialize", protocol_version = "2025-06-18" }, m)
    assert.is_nil(single(req [[,"id":0,"method":"initialize","params":{}]]).protocol_version)
  end)

  it("classifies a batch element by element, keeping valid ones around an invalid one", function()
    local r = ok('[' .. req [[,"id":1,"method":"tools/list"]] .. ',42,'
      .. req [[,"method":"notifications/cancelled","params":{"requestId":1}]] .. ','
      .. req [[,"id":"x","method":7]] .. ','
      .. req [[,"id":9,"result":{}]] .. ']')
    assert.is_true(r.batch)
    assert.same({
      { kind = "request", method = "tools/list", id_raw = "1" },
      { kind = "invalid", code = INVALID, message = "Invalid Request: a message must be a JSON object" },
      { kind = "notification", method = "notifications/cancelled" },
      { kind = "invalid", code = INVALID, message = 'Invalid Request: "method" must be a string', id_raw = '"x"' },
      { kind = "response", id_raw = "9", error = false },
    }, r.messages)
  end)

  it("accepts a batch of one and whitespace around everything", function()
    local r = ok(' \t\r\n[ { "jsonrpc" : "2.0" , "id" :  5 , "method" : "ping" } ] \n')
    assert.is_true(r.batch)
    assert.same({ { kind = "request", method = "ping", id_raw = "5" } }, r.messages)
  end)

  it("decodes escapes in keys and values like any JSON parser", function()
    local m = single('{"json\\u0072pc":"2.\\u0030","\\u0069d":"\\u00e9","method":"tools\\/call","params":{"name":"caf\\u00e9 \\ud83d\\ude00"}}')
    assert.equal("tools/call", m.method)
    assert.equal('"\\u00e9"', m.id_raw) -- raw, as sent
    assert.equal("caf\xC3\xA9 \xF0\x9F\x98\x80", m.name)
  end)
end)

describe("mcp_parse: ids are kept byte for byte", function()
  for _, id in ipairs { "12345678901234567890123", '"\xC3\xA9"', "-0", "0", "-17", '"a \\"quoted\\" \\\\ id"', '""',
    "123456789012345678901234567890123456789012345678901234567890123" } do
    it("keeps " .. id, function()
      local m = single(req(',"id":' .. id .. ',"method":"ping"'))
      assert.equal(id, m.id_raw)
      assert.equal('{"jsonrpc":"2.0","id":' .. id .. ',"error":{"code":-32601,"message":"x"}}',
        core.mcp_error_body(m.id_raw, -32601, "x"))
    end)
  end

  it("records the id of every batch element separately", function()
    local r = ok('[' .. req [[,"id":"a","method":"ping"]] .. ',' .. req [[,"method":"n","params":{"id":5}]]
      .. ',{"id" : 99999999999999999999 ,"jsonrpc":"2.0","result":{"id":1}},' .. req [[,"id":1.0,"method":"ping"]] .. ']')
    assert.same({ '"a"', nil, "99999999999999999999", nil },
      { r.messages[1].id_raw, r.messages[2].id_raw, r.messages[3].id_raw, r.messages[4].id_raw })
    assert.equal("invalid", r.messages[4].kind)
  end)

  it("accepts ids of exactly 128 bytes and refuses longer ones", function()
    local id128 = '"' .. ("a"):rep(126) .. '"'
    assert.equal(id128, single(req(',"id":' .. id128 .. ',"method":"ping"')).id_raw)
    local code, msg, id = fails(req(',"id":"' .. ("a"):rep(127) .. '","method":"ping"'))
    assert.same({ INVALID, "Invalid Request: id longer than 128 bytes" }, { code, msg })
    assert.is_nil(id)
    assert.same({ INVALID, "Invalid Request: id longer than 128 bytes" },
      { fails(req(',"id":"' .. ("\xC3\xA9"):rep(5000) .. '","method":"ping"')) })
  end)

  it("refuses fractional, exponent, boolean and structured ids", function()
    for _, id in ipairs { "1.5", "1e3", "1E+3", "-0.0", "true", "false", "{}", "[]", '["a"]' } do
      local code, msg, rid = fails(req(',"id":' .. id .. ',"method":"ping"'))
      assert.same({ INVALID, "Invalid Request: id must be a string, an integer or null" }, { code, msg })
      assert.is_nil(rid)
    end
  end)

  it("refuses a null request id but echoes the id of otherwise invalid messages", function()
    assert.same({ INVALID, "Invalid Request: a request id must not be null", "null" },
      { fails(req [[,"id":null,"method":"ping"]]) })
    assert.same({ INVALID, 'Invalid Request: "jsonrpc" must be "2.0"', "12345678901234567890123" },
      { fails('{"jsonrpc":"1.0","id":12345678901234567890123,"method":"ping"}') })
  end)
end)

describe("mcp_parse: malformed JSON is a parse error with a byte offset", function()
  local cases = {
    { "", "unexpected end of input at byte 0" },
    { "  \n", "unexpected end of input at byte 3" },
    { '{"jsonrpc":"2.0"', "unexpected end of input at byte 16" },
    { '{"jsonrpc":"2.0",', "unexpected end of input at byte 17" },
    { '{"jsonrpc":"2.', "unterminated string at byte 14" },
    { "[1,2", "unexpected end of input at byte 4" },
    { "{}x", "unexpected character after the top-level value at byte 2" },
    { "{} {}", "unexpected character after the top-level value at byte 3" },
    { "[] []", "unexpected character after the top-level value at byte 3" },
    { "{}\0", "unexpected character after the top-level value at byte 2" },
    { '{"jsonrpc":"2.0"}}', "unexpected character after the top-level value at byte 17" },
    { "\xEF\xBB\xBF{}", "unexpected character at byte 0" },
    { "{'a':1}", "unexpected character at byte 1" },
    { '{"a" 1}', "unexpected character at byte 5" },
    { '{"a":1,}', "unexpected character at byte 7" },
    { "[1,]", "unexpected character at byte 3" },
    { "[1 2]", "unexpected character at byte 3" },
    { '{"a":1 "b":2}', "unexpected character at byte 7" },
    { "{a:1}", "unexpected character at byte 1" },
    { '{"a":undefined}', "unexpected character at byte 5" },
    { '{"a":\x0b1}', "unexpected character at byte 5" },
    { '{"a":tru}', "invalid literal at byte 5" },
    { '{"a":nul}', "invalid literal at byte 5" },
    { '{"a":True}', "unexpected character at byte 5" },
    { '{"a":01}', "unexpected character at byte 6" },
    { '{"a":1.}', "invalid number at byte 7" },
    { '{"a":.5}', "unexpected character at byte 5" },
    { '{"a":+1}', "unexpected character at byte 5" },
    { '{"a":-}', "invalid number at byte 6" },
    { '{"a":1e}', "invalid number at byte 7" },
    { '{"a":1e+}', "invalid number at byte 8" },
    { '{"a":0x10}', "unexpected character at byte 6" },
    { '{"a":"\\x"}', "invalid escape in a string at byte 6" },
    { '{"a":"\\u12"}', "invalid \\u escape in a string at byte 6" },
    { '{"a":"\\u12G4"}', "invalid \\u escape in a string at byte 6" },
    { '{"a":"\\', "unterminated string at byte 7" },
    { '{"a":"\\U0041"}', "invalid escape in a string at byte 6" },
    { '{"a":"\\ud800"}', "lone surrogate escape at byte 6" },
    { '{"a":"\\udc00"}', "lone surrogate escape at byte 6" },
    { '{"a":"\\ud800\\u0041"}', "lone surrogate escape at byte 6" },
    { '{"a":"\\ud800\\ud800"}', "lone surrogate escape at byte 6" },
    { '{"a":"x\\udbff"}', "lone surrogate escape at byte 7" },
    { '{"a":"\xFF"}', "invalid UTF-8 in a string at byte 6" },
    { '{"a":"\xC0\xAF"}', "invalid UTF-8 in a string at byte 6" },   -- overlong '/'
    { '{"a":"\xE0\x80\xAF"}', "invalid UTF-8 in a string at byte 6" }, -- overlong
    { '{"a":"\xF0\x80\x80\xAF"}', "invalid UTF-8 in a string at byte 6" }, -- overlong
    { '{"a":"\xED\xA0\x80"}', "invalid UTF-8 in a string at byte 6" }, -- UTF-8 encoded surrogate
    { '{"a":"\xF4\x90\x80\x80"}', "invalid UTF-8 in a string at byte 6" }, -- above U+10FFFF
    { '{"a":"ok\x80"}', "invalid UTF-8 in a string at byte 8" },       -- stray continuation
    { '{"a":"\xE2\x82"}', "invalid UTF-8 in a string at byte 6" },     -- truncated sequence
    { '{"a":"\xE2\x82', "invalid UTF-8 in a string at byte 6" },
    { '{"\xFE":1}', "invalid UTF-8 in a string at byte 2" },
    { '{"a":"tab\there"}', "control character U+0009 in a string at byte 9" },
    { '{"a":"line\nbreak"}', "control character U+000A in a string at byte 10" },
    { '{"a":"nul\0"}', "control character U+0000 in a string at byte 9" },
    { '{"a\x01":1}', "control character U+0001 in a string at byte 3" },
  }
  for _, c in ipairs(cases) do
    it(("refuses %q"):format(c[1]), function()
      assert.same({ PARSE, "Parse error: " .. c[2] }, { fails(c[1]) })
    end)
  end

  -- A long string is scanned sixteen bytes at a time (SSE2 on x86-64) and
  -- eight at a time before its end: each kind of stop is found at every
  -- offset of a block, after plain runs of every length up to 40 bytes.
  it("finds each stop at every offset of a long string", function()
    local stops = {
      { "\t", "control character U+0009" }, { "\1", "control character U+0001" },
      { "\31", "control character U+001F" }, { "\xFF", "invalid UTF-8" },
      { "\xC0\xAF", "invalid UTF-8" },
    }
    for k = 0, 40 do
      local run = ("x"):rep(k)
      for _, c in ipairs(stops) do
        local body = '{"a":"' .. run .. c[1] .. ("y"):rep(40) .. '"}'
        assert.same({ PARSE, "Parse error: " .. c[2] .. " in a string at byte " .. (6 + k) },
          { fails(body) }, ("%q"):format(body))
      end
      -- Plain bytes of every kind, and escapes, around the blocks' edges.
      local text = run .. "\x7f~ \xC3\xA9\xE2\x82\xAC" .. ("z"):rep(k)
      assert.equal(text, single(req(',"id":1,"method":"' .. text .. '"')).method)
      assert.equal(run .. '"' .. run, single(req(',"id":1,"method":"' .. run .. '\\"' .. run .. '"')).method)
    end
  end)

  it("accepts every legal escape and the edges of UTF-8", function()
    local m = single(req [[,"id":1,"method":"tools/call","params":{"name":"\"\\\/\b\f\n\r\t\u0001\uffff\udbff\udfff","arguments":{"e":"\u007f\u0080\u07ff\u0800"}}]])
    assert.equal('"\\/\b\f\n\r\t\1\xEF\xBF\xBF\xF4\x8F\xBF\xBF', m.name)
    m = single(req(',"id":1,"method":"x\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xF4\x8F\xBF\xBF"'))
    assert.equal("x\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", m.method)
  end)

  it("accepts legal numbers", function()
    local m = single(req [[,"id":1,"method":"tools/call","params":{"name":"n","arguments":{"a":-0.5e-3,"b":0,"c":1E+2,"d":-12.25,"e":9007199254740993}}]])
    assert.same({ a = -0.0005, b = 0, c = 100.0, d = -12.25, e = 9007199254740992 }, m.arguments)
  end)

  it("refuses numbers longer than 63 characters", function()
    local prefix = req(',"id":1,"method":"x","params":{"n":'):sub(1, -2)
    assert.equal(51, #prefix)
    assert.same({ INVALID, "Invalid Request: number longer than 63 characters at byte 51" },
      { fails(prefix .. ("1"):rep(64) .. '}}') })
    -- 63 characters are fine
    ok(prefix .. "-0." .. ("1"):rep(60) .. '}}')
  end)

  it("refuses bodies that are not an object or an array", function()
    for _, body in ipairs { "1", '"x"', "null", "true" } do
      assert.same({ INVALID, "Invalid Request: the body must be a JSON object or array" }, { fails(body) })
    end
  end)
end)

describe("mcp_parse: nesting", function()
  -- depth 1 = the message, 2 = params, 3 = arguments, ...
  local function nested_call(depth)
    local inner = "{" .. ('"a":{'):rep(depth - 4) .. ('}'):rep(depth - 4) .. "}"
    return req(',"id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":' .. inner .. '}}')
  end

  it("accepts 64 levels", function()
    local m = single(nested_call(64))
    local v, d = m.arguments.x, 4
    while v.a do v, d = v.a, d + 1 end
    assert.equal(64, d)
  end)

  it("refuses 65 levels with the offset of the bracket", function()
    local body = nested_call(65)
    -- the inner object is level 4; each '"a":{' adds one, the 61st reaches 65
    local at = #req(',"id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":{'):sub(1, -2) + 5 * 61 - 1
    assert.equal("{", body:sub(at + 1, at + 1))
    assert.same({ INVALID, ("Invalid Request: nesting deeper than 64 at byte %d"):format(at) }, { fails(body) })
  end)

  it("stops 100000 opening brackets at once", function()
    local t0 = os.clock()
    assert.same({ INVALID, "Invalid Request: nesting deeper than 64 at byte 64" }, { fails(("["):rep(100000)) })
    assert.same({ INVALID, "Invalid Request: nesting deeper than 64 at byte 320" },
      { fails(('{"a":'):rep(100000)) })
    assert.same({ INVALID, "Invalid Request: nesting deeper than 64 at byte 64" },
      { fails(("["):rep(100000) .. ("]"):rep(100000)) })
    assert.is_true(os.clock() - t0 < 1.0)
  end)

  it("honours a configured depth", function()
    local body = req [[,"id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":1}}]]
    ok(body, { max_depth = 3 })
    local at = body:find('{"x"', 1, true) - 1
    assert.same({ INVALID, ("Invalid Request: nesting deeper than 2 at byte %d"):format(at) },
      { fails(body, { max_depth = 2 }) })
  end)
end)

describe("mcp_parse: duplicate keys", function()
  it("refuses a duplicate at the top level", function()
    assert.same({ INVALID, 'Invalid Request: duplicate key "method" at byte 33' },
      { fails('{"jsonrpc":"2.0","method":"ping","method":"tools/call","id":1}') })
    assert.same({ INVALID, 'Invalid Request: duplicate key "id" at byte 24' },
      { fails('{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}') })
  end)

  it("refuses a duplicate deep inside arguments", function()
    local body = req [[,"id":1,"method":"tools/call","params":{"name":"delete_entry","arguments":{"opts":{"permanent":false,"x":[{"k":1,"permanent":2,"k":3}]}}}]]
    local at = body:find('"k":3', 1, true) - 1
    assert.same({ INVALID, ('Invalid Request: duplicate key "k" at byte %d'):format(at) }, { fails(body) })
    body = req [[,"id":1,"method":"tools/call","params":{"name":"delete_entry","arguments":{"permanent":false,"permanent":true}}]]
    at = body:find('"permanent":true', 1, true) - 1
    assert.same({ INVALID, ('Invalid Request: duplicate key "permanent" at byte %d'):format(at) }, { fails(body) })
  end)

  it("compares keys after decoding escapes", function()
    local body = req [[,"id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}]]
    local at = body:find('"n\\u0061me"', 1, true) - 1
    assert.same({ INVALID, ('Invalid Request: duplicate key "name" at byte %d'):format(at) }, { fails(body) })
  end)

  it("allows the same key in different objects and in sibling objects", function()
    local m = single(req [[,"id":1,"method":"tools/call","params":{"name":"a","arguments":{"name":"b","l":[{"name":1},{"name":2}]}}]])
    assert.equal("a", m.name)
    assert.equal("b", m.arguments.name)
  end)

  it("checks wide objects without going quadratic", function()
    local keys = {}
    for i = 1, 20000 do keys[#keys + 1] = ('"k%d":%d'):format(i, i) end
    local wide = "{" .. table.concat(keys, ",") .. "}"
    local t0 = os.clock()
    local m = single(req(',"id":1,"method":"tools/call","params":{"name":"w","arguments":' .. wide .. '}'))
    assert.equal(20000, m.arguments.k20000)
    local body = req(',"id":1,"method":"tools/call","params":{"name":"w","arguments":' .. wide:sub(1, -2) .. ',"k777":0,"k5":0}}')
    -- of several duplicates, the earliest re-occurrence is reported
    local at = body:find('"k777":0,', 1, true) - 1
    assert.same({ INVALID, ('Invalid Request: duplicate key "k777" at byte %d'):format(at) }, { fails(body) })
    assert.is_true(os.clock() - t0 < 2.0)
  end)

  it("takes an empty key once and refuses it twice (fuzz/corpus/json/regress-empty-key)", function()
    local m = single(req [[,"id":1,"method":"tools/call","params":{"name":"e","arguments":{"":{"":1}}}]])
    assert.equal(1, m.arguments[""][""])
    local body = req [[,"id":1,"method":"tools/call","params":{"name":"e","arguments":{"":1,"":2}}]]
    local at = body:find('"":2', 1, true) - 1
    assert.same({ INVALID, ('Invalid Request: duplicate key "" at byte %d'):format(at) }, { fails(body) })
  end)

  it("quotes at most 64 bytes of a long key", function()
    local key = ("\xC3\xA9"):rep(40)
    local code, msg = fails('{"' .. key .. '":1,"' .. key .. '":2}')
    assert.equal(INVALID, code)
    assert.equal('Invalid Request: duplicate key "' .. ("\xC3\xA9"):rep(32) .. '..." at byte 86', msg)
  end)
end)

describe("mcp_parse: \\u0000", function()
  it("refuses it in a method name", function()
    assert.same({ INVALID, "Invalid Request: \\u0000 in a string at byte 31" },
      { fails('{"jsonrpc":"2.0","method":"ping\\u0000tools/call","id":1}') })
  end)
  it("refuses it in an argument string and in a key", function()
    local body = req [[,"id":1,"method":"tools/call","params":{"name":"t","arguments":{"path":"/safe\u0000/../etc"}}]]
    local at = body:find("\\u0000", 1, true) - 1
    assert.same({ INVALID, ("Invalid Request: \\u0000 in a string at byte %d"):format(at) }, { fails(body) })
    assert.same({ INVALID, "Invalid Request: \\u0000 in a string at byte 3" }, { fails('{"a\\u0000b":1}') })
  end)
end)

describe("mcp_parse: JSON-RPC rules", function()
  it("needs jsonrpc exactly \"2.0\"", function()
    for _, v in ipairs { '', ',"jsonrpc":"1.0"', ',"jsonrpc":2.0', ',"jsonrpc":"2.0 "', ',"jsonrpc":"2"', ',"jsonrpc":null' } do
      assert.same({ INVALID, 'Invalid Request: "jsonrpc" must be "2.0"', "1" },
        { fails('{"id":1,"method":"ping"' .. v .. '}') })
    end
    -- keys are case-sensitive: "JSONRPC" is not "jsonrpc"
    assert.same({ INVALID, 'Invalid Request: "jsonrpc" must be "2.0"' }, { fails('{"JSONRPC":"2.0","method":"ping"}') })
  end)

  it("needs method to be a string", function()
    for _, v in ipairs { "5", "null", "{}", "[]", "true" } do
      assert.same({ INVALID, 'Invalid Request: "method" must be a string', "1" },
        { fails(req(',"id":1,"method":' .. v)) })
    end
    -- "Method" is not "method"
    assert.same({ INVALID, 'Invalid Request: a message needs "method", or "result" or "error"' },
      { fails(req ',"Method":"ping"') })
  end)

  it("needs params to be an object or an array", function()
    single(req ',"id":1,"method":"x","params":[1,2]')
    for _, v in ipairs { '"x"', "1", "null", "true" } do
      assert.same({ INVALID, 'Invalid Request: "params" must be an object or an array', "1" },
        { fails(req(',"id":1,"method":"x","params":' .. v)) })
    end
  end)

  it("checks tools/call, prompts/get and resource params", function()
    local cases = {
      { ',"id":1,"method":"tools/call"', 'Invalid params: tools/call needs a string "params.name"' },
      { ',"id":1,"method":"tools/call","params":{}', 'Invalid params: tools/call needs a string "params.name"' },
      { ',"id":1,"method":"tools/call","params":["x"]', 'Invalid params: tools/call needs a string "params.name"' },
      { ',"id":1,"method":"tools/call","params":{"name":5}', 'Invalid params: tools/call needs a string "params.name"' },
      { ',"id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}', 'Invalid params: "params.arguments" must be an object' },
      { ',"id":1,"method":"tools/call","params":{"name":"t","arguments":"{}"}', 'Invalid params: "params.arguments" must be an object' },
      { ',"id":1,"method":"prompts/get","params":{"nam":"p"}', 'Invalid params: prompts/get needs a string "params.name"' },
      { ',"id":1,"method":"resources/read","params":{"name":"r"}', 'Invalid params: resources/read needs a string "params.uri"' },
      { ',"id":1,"method":"resources/subscribe","params":{"uri":1}', 'Invalid params: resources/subscribe needs a string "params.uri"' },
      { ',"id":1,"method":"initialize","params":{"protocolVersion":20250618}', 'Invalid params: "params.protocolVersion" must be a string' },
    }
    for _, c in ipairs(cases) do
      assert.same({ PARAMS, c[2], "1" }, { fails(req(c[1])) })
    end
  end)

  it("refuses messages that mix or lack request and response members", function()
    assert.same({ INVALID, 'Invalid Request: a message cannot carry both "method" and "result" or "error"', "1" },
      { fails(req ',"id":1,"method":"x","result":{}') })
    assert.same({ INVALID, 'Invalid Request: a response cannot carry both "result" and "error"', "1" },
      { fails(req ',"id":1,"result":{},"error":{"code":1,"message":"m"}') })
    assert.same({ INVALID, 'Invalid Request: a response needs an "id"' }, { fails(req ',"result":{}') })
    assert.same({ INVALID, 'Invalid Request: a message needs "method", or "result" or "error"', "1" },
      { fails(req ',"id":1') })
    for _, e in ipairs { '"x"', '{"code":1.5,"message":"m"}', '{"code":"1","message":"m"}', '{"code":1}', '{"message":"m"}' } do
      assert.same({ INVALID, 'Invalid Request: "error" must be an object with an integer "code" and a string "message"', "1" },
        { fails(req(',"id":1,"error":' .. e)) })
    end
  end)

  it("refuses an empty batch", function()
    assert.same({ INVALID, "Invalid Request: empty batch" }, { fails("[]") })
    assert.same({ INVALID, "Invalid Request: empty batch" }, { fails(" [ \n ] ") })
  end)

  it("limits the batch size", function()
    local one = req ',"method":"notifications/x"'
    local function batch(n) return "[" .. (one .. ","):rep(n - 1) .. one .. "]" end
    assert.equal(100, #ok(batch(100)).messages)
    assert.same({ INVALID, "Invalid Request: batch larger than 100 messages" }, { fails(batch(101)) })
    assert.same({ INVALID, "Invalid Request: batch larger than 2 messages" }, { fails(batch(3), { max_batch = 2 }) })
    assert.equal(2, #ok(batch(2), { max_batch = 2 }).messages)
  end)

  it("limits the body size", function()
    local body = req ',"method":"notifications/x"'
    ok(body, { max_body = #body })
    assert.same({ INVALID, ("Invalid Request: body larger than %d bytes"):format(#body - 1) },
      { fails(body, { max_body = #body - 1 }) })
    assert.same({ INVALID, "Invalid Request: body larger than 1048576 bytes" },
      { fails('{"a":"' .. ("x"):rep(1048576) .. '"}') })
  end)

  it("validates the limits table", function()
    assert.has_error(function() core.mcp_parse("{}", { max_depth = 0 }) end)
    assert.has_error(function() core.mcp_parse("{}", { max_depth = 513 }) end)
    assert.has_error(function() core.mcp_parse("{}", { max_batch = "x" }) end)
    assert.has_error(function() core.mcp_parse("{}", 5) end)
    assert.has_error(function() core.mcp_parse(nil) end)
  end)
end)

describe("mcp_error_body", function()
  it("renders ids raw, or null", function()
    assert.equal('{"jsonrpc":"2.0","id":"\xC3\xA9","error":{"code":-32600,"message":"Invalid Request: empty batch"}}',
      core.mcp_error_body('"\xC3\xA9"', -32600, "Invalid Request: empty batch"))
    assert.equal('{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
      core.mcp_error_body(nil, -32700, "Parse error"))
    -- anything that is not an id literal becomes null: no injection through the id
    for _, bad in ipairs { '1,"result":{}', "1.5", '"open', "{}", "", "nul", '"a\\u0000"', "01", "-", '"' .. ("a"):rep(127) .. '"' } do
      assert.equal('{"jsonrpc":"2.0","id":null,"error":{"code":-32020,"message":"m"}}',
        core.mcp_error_body(bad, -32020, "m"))
    end
  end)

  it("escapes the message", function()
    assert.equal('{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"a \\"q\\" \\\\ \\n\\r\\t\\b\\f\\u0001\\u001f \xC3\xA9 \xEF\xBF\xBD\xEF\xBF\xBD/"}}',
      core.mcp_error_body("1", -32602, 'a "q" \\ \n\r\t\b\f\1\31 \xC3\xA9 \xFF\xC0/'))
    assert.has_error(function() core.mcp_error_body("1", -32602, "a\0b") end)
  end)

  it("adds a data object", function()
    assert.equal('{"jsonrpc":"2.0","id":"x","error":{"code":-32020,"message":"m","data":{"header":"Mcp-Name","n":[1,2]}}}',
      core.mcp_error_body('"x"', -32020, "m", '{"header":"Mcp-Name","n":[1,2]}'))
    assert.has_error(function() core.mcp_error_body("1", -32020, "m", "[1]") end)
    assert.has_error(function() core.mcp_error_body("1", -32020, "m", '{"a":1,"a":2}') end)
    assert.has_error(function() core.mcp_error_body("1", -32020, "m", "{") end)
  end)

  it("produces bodies the parser reads back as error responses", function()
    local body = core.mcp_error_body("12345678901234567890123", -32600, "bad \"thing\"\n")
    assert.same({ kind = "response", id_raw = "12345678901234567890123", error = true }, single(body))
  end)

  it("exports the codes", function()
    assert.same({ parse_error = -32700, invalid_request = -32600, method_not_found = -32601,
      invalid_params = -32602, internal_error = -32603, header_mismatch = -32020 }, core.mcp_codes)
  end)
end)

describe("protocol versions", function()
  it("knows the versions", function()
    assert.same({ "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28" }, core.mcp_versions())
    for _, v in ipairs(core.mcp_versions()) do assert.is_true(core.mcp_version_supported(v)) end
    for _, v in ipairs { "2025-01-01", "2025-06-18 ", "", "2026-07-29" } do
      assert.is_false(core.mcp_version_supported(v))
    end
    assert.is_false(core.mcp_version_supported(nil))
  end)
  it("treats a missing header as 2025-03-26", function()
    assert.equal("2025-03-26", core.mcp_effective_version(nil))
    assert.equal("2025-06-18", core.mcp_effective_version("2025-06-18"))
    assert.equal("bogus", core.mcp_effective_version("bogus"))
  end)
end)

describe("mcp_check_headers (2026-07-28)", function()
  local V = "2026-07-28"
  local call = req ',"id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}'
  local read = req ',"id":2,"method":"resources/read","params":{"uri":"file:///a b.txt"}'
  local prompt = req ',"id":3,"method":"prompts/get","params":{"name":"code_review"}'
  local list = req ',"id":4,"method":"tools/list"'

  local function mismatch(msg, ...)
    assert.same({ nil, MISMATCH, msg }, { core.mcp_check_headers(...) })
  end

  it("accepts matching headers", function()
    assert.is_true(core.mcp_check_headers(call, V, "tools/call", "get_weather"))
    assert.is_true(core.mcp_check_headers(read, V, "resources/read", "file:///a b.txt"))
    assert.is_true(core.mcp_check_headers(prompt, V, "prompts/get", "code_review"))
    assert.is_true(core.mcp_check_headers(list, V, "tools/list", nil))
    assert.is_true(core.mcp_check_headers(list, V, "tools/list", "ignored"))
    assert.is_true(core.mcp_check_headers(req ',"method":"notifications/initialized"', V, "notifications/initialized"))
    assert.is_true(core.mcp_check_headers(req ',"id":1,"method":"resources/subscribe","params":{"uri":"u"}', V, "resources/subscribe"))
  end)

  it("reports which header disagrees", function()
    mismatch('Header mismatch: Mcp-Method header does not match the body\'s "method"', call, V, "tools/list", "get_weather")
    mismatch('Header mismatch: Mcp-Method header does not match the body\'s "method"', call, V, "Tools/call", "get_weather")
    mismatch('Header mismatch: Mcp-Name header does not match "params.name"', call, V, "tools/call", "delete_everything")
    mismatch('Header mismatch: Mcp-Name header does not match "params.name"', call, V, "tools/call", "get_weather ")
    mismatch('Header mismatch: Mcp-Name header does not match "params.uri"', read, V, "resources/read", "file:///b.txt")
    mismatch('Header mismatch: Mcp-Name header does not match "params.name"', prompt, V, "prompts/get", "other")
  end)

  it("treats a missing required header as a mismatch", function()
    mismatch("Header mismatch: missing Mcp-Method header", call, V, nil, "get_weather")
    mismatch("Header mismatch: missing Mcp-Name header", call, V, "tools/call", nil)
    mismatch("Header mismatch: missing Mcp-Name header", read, V, "resources/read", nil)
    mismatch("Header mismatch: missing Mcp-Method header", list, V, nil, nil)
  end)

  it("decodes base64 header values", function()
    local body = req ',"id":1,"method":"tools/call","params":{"name":"Hello, \xE4\xB8\x96\xE7\x95\x8C"}'
    assert.is_true(core.mcp_check_headers(body, V, "tools/call", "=?base64?SGVsbG8sIOS4lueVjA==?="))
    assert.is_true(core.mcp_check_headers(body, V, "tools/call", "=?base64?SGVsbG8sIOS4lueVjA?="))
    mismatch('Header mismatch: Mcp-Name header does not match "params.name"', body, V, "tools/call", "=?base64?SGVsbG8=?=")
    mismatch("Header mismatch: Mcp-Name header is not valid base64", body, V, "tools/call", "=?base64?S*VsbG8=?=")
    mismatch("Header mismatch: Mcp-Name header is not valid base64", body, V, "tools/call", "=?base64?SGVsbG8sI?=")
  end)

  it("refuses Mcp-Method on a response and batches altogether", function()
    assert.is_true(core.mcp_check_headers(req ',"id":1,"result":{}', V, nil, nil))
    mismatch("Header mismatch: Mcp-Method header sent with a response", req ',"id":1,"result":{}', V, "tools/call", nil)
    assert.same({ nil, INVALID, "Invalid Request: batches are not allowed in protocol version 2026-07-28" },
      { core.mcp_check_headers("[" .. list .. "]", V, "tools/list") })
  end)

  it("does not check other versions, and passes parse errors through", function()
    assert.is_true(core.mcp_check_headers(call, "2025-06-18", "tools/list", "x"))
    assert.is_true(core.mcp_check_headers(call, nil, nil, nil))
    assert.same({ nil, PARSE, "Parse error: unexpected character after the top-level value at byte 2" },
      { core.mcp_check_headers("{}x", V, "tools/call", "x") })
    assert.same({ nil, INVALID, 'Invalid Request: "jsonrpc" must be "2.0"' },
      { core.mcp_check_headers('{"id":1,"method":"tools/list"}', V, "tools/list") })
  end)
end)

describe("robustness", function()
  local seeds = {
    req ',"id":1,"method":"tools/call","params":{"name":"delete_entry","arguments":{"id":"e1","permanent":true,"n":[1,2.5,-3e2,null,{"k":"v"}]}}',
    req ',"id":"r-\xC3\xA9","method":"resources/read","params":{"uri":"journal://entries/\\u00e9"}',
    req ',"id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}',
    req ',"method":"notifications/initialized"',
    req ',"id":12345678901234567890123,"result":{"tools":[]}}',
    req ',"id":7,"error":{"code":-32601,"message":"nope"}',
    "[" .. req ',"id":1,"method":"tools/list"' .. "," .. req ',"id":2,"method":"prompts/get","params":{"name":"p","arguments":{"a":"\\ud83d\\ude00"}}' .. "]",
  }
  local interesting = { "{", "}", "[", "]", '"', "\\", ",", ":", "0", "-", "e", ".", "u", "\0", "\xFF", "\xC3", "\xED", " ", "n", "t" }
  local known = { [-32700] = true, [-32600] = true, [-32602] = true }
  local kinds = { request = true, notification = true, response = true, invalid = true }

  local function mutate(s)
    local n = math.random(1, 4)
    for _ = 1, n do
      local op, i = math.random(1, 6), math.random(1, #s + 1)
      if op == 1 then -- replace a byte with a random one
        s = s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1)
      elseif op == 2 then -- insert a structural byte
        s = s:sub(1, i - 1) .. interesting[math.random(#interesting)] .. s:sub(i)
      elseif op == 3 then -- delete a byte
        s = s:sub(1, i - 1) .. s:sub(i + 1)
      elseif op == 4 then -- duplicate a slice (duplicate keys, deeper nesting)
        local j = math.min(#s, i + math.random(0, 20))
        s = s:sub(1, j) .. s:sub(i, j) .. s:sub(j + 1)
      elseif op == 5 then -- truncate
        s = s:sub(1, i - 1)
      else -- wrap in brackets
        s = ("["):rep(math.random(1, 70)) .. s
      end
    end
    return s
  end

  it("never crashes and always answers with a model or a JSON-RPC error", function()
    math.randomseed(20261123)
    local parsed, refused = 0, 0
    for _ = 1, 4000 do
      local body = mutate(seeds[math.random(#seeds)])
      local r, code, msg, id = core.mcp_parse(body)
      if r then
        parsed = parsed + 1
        assert.is_boolean(r.batch)
        assert.is_true(#r.messages >= 1)
        for _, m in ipairs(r.messages) do
          assert.is_true(kinds[m.kind])
          if m.id_raw then
            assert.is_true(#m.id_raw <= 128)
            -- the id echoes verbatim and the error body reads back
            local eb = core.mcp_error_body(m.id_raw, -32600, m.message or "x")
            local back = core.mcp_parse(eb)
            assert.equal(m.id_raw, back.messages[1].id_raw)
          end
          if m.kind == "invalid" then assert.is_true(known[m.code]) end
        end
      else
        refused = refused + 1
        assert.is_true(known[code], "unexpected code " .. tostring(code))
        assert.is_string(msg)
        assert.truthy(msg:match("^Parse error: ") or msg:match("^Invalid Request: ") or msg:match("^Invalid params: "))
        local at = msg:match(" at byte (%d+)")
        if at then assert.is_true(tonumber(at) <= #body) end
        if id then assert.is_true(#id <= 128) end
        local eb = core.mcp_error_body(id, code, msg)
        local back = core.mcp_parse(eb)
        assert.truthy(back, eb)
        assert.equal("response", back.messages[1].kind)
      end
    end
    -- the mutations must exercise both outcomes
    assert.is_true(parsed > 100)
    assert.is_true(refused > 1000)
  end)

  it("survives random bytes", function()
    math.randomseed(7)
    for _ = 1, 1000 do
      local t = {}
      for k = 1, math.random(0, 64) do t[k] = string.char(math.random(0, 255)) end
      local r, code = core.mcp_parse(table.concat(t))
      assert.is_true(r ~= nil or known[code])
    end
  end)
end)
