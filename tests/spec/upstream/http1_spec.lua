-- The HTTP/1.1 response parser the gateway uses for plain-http upstreams:
-- framing by Content-Length, chunked coding and connection close, interim
-- responses, keep-alive, refusal of anything it cannot frame, flow-control
-- pauses, and the same result whatever way the network splits the bytes.
local core = require "scopegate.core"

local function parse(s, opts)
  return core.http1_parse(type(s) == "table" and s or { s }, opts)
end

-- Every way of cutting s in two, and byte by byte.
local function splits(s)
  local out = { { s } }
  for i = 1, #s - 1 do out[#out + 1] = { s:sub(1, i), s:sub(i + 1) } end
  local bytes = {}
  for i = 1, #s do bytes[i] = s:sub(i, i) end
  out[#out + 1] = bytes
  return out
end

local CL = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"xyz\"}"
local CHUNKED = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" ..
  "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"

describe("http1 parser", function()
  it("frames by Content-Length, whatever the split", function()
    for _, pieces in ipairs(splits(CL)) do
      local r = parse(pieces)
      assert.equal("done", r.state)
      assert.equal(200, r.status)
      assert.is_true(r.keepalive)
      assert.equal('{"a":"xyz"}', r.body)
      assert.same({ "HTTP/1.1 200 OK\r\n", "Content-Type: application/json\r\n",
                    "Content-Length: 11\r\n", "\r\n" }, r.headers)
    end
  end)

  it("decodes chunked bodies with extensions and trailers, whatever the split", function()
    for _, pieces in ipairs(splits(CHUNKED)) do
      local r = parse(pieces)
      assert.equal("done", r.state, r.error)
      assert.equal("hello world", r.body)
      assert.equal(#CHUNKED, r.consumed)
    end
  end)

  it("stops at the end of the response and leaves the rest unconsumed", function()
    local r = parse(CL .. "HTTP/1.1 200 OK\r\n")
    assert.equal("done", r.state)
    assert.equal(#CL, r.consumed)
  end)

  it("skips interim 1xx heads and knows bodiless statuses", function()
    local r = parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert.equal("done", r.state)
    assert.equal(204, r.status)
    assert.equal("", r.body)
    r = parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
    assert.equal("done", r.state)
  end)

  it("reads to the connection's end when nothing else frames the body", function()
    local r = parse("HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n", { eof = true })
    assert.equal("done", r.state)
    assert.is_false(r.keepalive)
    assert.equal("data: 1\n\n", r.body)
    r = parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert.equal("done", r.state)
    assert.is_false(r.keepalive)
  end)

  it("lets chunked win over Content-Length (no smuggling by disagreement)", function()
    local r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      "2\r\nok\r\n0\r\n\r\n")
    assert.equal("done", r.state)
    assert.equal("ok", r.body)
  end)

  it("refuses what it cannot frame with certainty", function()
    local cases = {
      ["garbage that is not HTTP\r\n\r\n"] = "response does not start with a status line",
      ["HTTP/2 200 OK\r\n\r\n"] = "not an HTTP/1.x status line",
      ["HTTP/1.1 2x0 OK\r\n\r\n"] = "bad status code",
      ["HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"] = "bad Content-Length",
      ["HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"] = "bad Content-Length",
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"] = "unsupported Transfer-Encoding",
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"] = "bad chunk size",
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n"] = "chunk not followed by CRLF",
      ["HTTP/1.1 101 Switching Protocols\r\n\r\n"] = "protocol switch refused",
      ["HTTP/1.1 200 OK\r\nX: " .. ("a"):rep(9000) .. "\r\n\r\n"] = "response line too long",
    }
    for input, why in pairs(cases) do
      local r = parse(input)
      assert.equal("error", r.state, input:sub(1, 40))
      assert.equal(why, r.error)
    end
    local big = { "HTTP/1.1 200 OK\r\n" }
    for i = 1, 20 do big[#big + 1] = ("X-%d: %s\r\n"):format(i, ("b"):rep(4000)) end
    local r = parse(table.concat(big))
    assert.equal("response header block too large", r.error)
  end)

  it("calls a truncated answer an error at the connection's end", function()
    local r = parse(CL:sub(1, -3), { eof = true })
    assert.equal("error", r.state)
    assert.equal("connection closed before the response was complete", r.error)
    r = parse("", { eof = true })
    assert.equal("error", r.state)
  end)

  it("pauses mid-body without losing or repeating a byte", function()
    local r = parse(CHUNKED, { pause_after = 3 })
    assert.equal("done", r.state)
    assert.equal("hello world", r.body)
    r = parse(CL, { pause_after = 5 })
    assert.equal('{"a":"xyz"}', r.body)
  end)
end)
