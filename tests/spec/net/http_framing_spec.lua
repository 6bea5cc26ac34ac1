-- http_framing_spec.lua -- strict HTTP/1.1 request framing, black box, raw bytes.
--
-- Every attack a front proxy could frame differently from scopegate (RFC 9112
-- §2.2, §5.1, §5.2, §6.1, §6.3) is a row of CASES: the raw request, the status
-- scopegate must answer with, and always: exactly one response, the
-- connection closed, nothing reached the upstream. A new finding is a new
-- row. The requests are sent with tests/peers/raw_http.py (no HTTP client
-- library can send them) to the real binary in front of
-- tests/peers/echo_upstream.py; CONTROLS are well-formed requests the same
-- rules must let through, so a refusal is never for the wrong reason.
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local SCOPEGATE = procs.SCOPEGATE

local POLICY = [[
return {
  resource = "https://echo.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  scopes = { ["echo:read"] = "Read" },
  tools = { echo = "echo:read" },
  default = "public",
}
]]

local BODY = '{"jsonrpc":"2.0","id":1,"method":"ping"}'

-- <HOST> is the gateway's address; <CL> the body's length; <B> the body.
local HEAD = "Host: <HOST>\r\nContent-Type: application/json\r\n" ..
             "Accept: application/json, text/event-stream\r\n"
local function post(fields, body)
  return "POST /mcp HTTP/1.1\r\n" .. HEAD .. fields .. "\r\n" .. (body or "<B>")
end
local function chunked(fields)
  return post("Transfer-Encoding: chunked\r\n" .. fields, "<X>\r\n<B>\r\n0\r\n\r\n")
end

local CASES = {
  -- framing: exactly one of Content-Length / Transfer-Encoding: chunked (§6.1, §6.3)
  { "Content-Length and Transfer-Encoding", 400, chunked("Content-Length: <CL>\r\n") },
  { "two different Content-Lengths", 400, post("Content-Length: <CL>\r\nContent-Length: 5\r\n") },
  { "two equal Content-Lengths", 400, post("Content-Length: <CL>\r\nContent-Length: <CL>\r\n") },
  { "a Content-Length list", 400, post("Content-Length: <CL>, <CL>\r\n") },
  { "a signed Content-Length", 400, post("Content-Length: +<CL>\r\n") },
  { "a hex Content-Length", 400, post("Content-Length: 0x28\r\n") },
  { "an empty Content-Length", 400, post("Content-Length:\r\n") },
  { "a huge Content-Length", 400, post("Content-Length: 99999999999999999999999\r\n") },
  { "gzip, chunked", 501, chunked(""):gsub("chunked", "gzip, chunked", 1) },
  { "xchunked", 501, chunked(""):gsub("chunked", "xchunked", 1) },
  { "chunked, chunked", 501, chunked(""):gsub("chunked", "chunked, chunked", 1) },
  { "identity", 501, chunked(""):gsub("chunked", "identity", 1) },
  { "an empty Transfer-Encoding", 400, chunked(""):gsub("chunked", "", 1) },
  { "a Transfer-Encoding with a comma only", 400, chunked(""):gsub("chunked", ",", 1) },
  { "two Transfer-Encodings", 400, chunked("Transfer-Encoding: chunked\r\n") },
  { "Transfer-Encoding in HTTP/1.0", 400, chunked(""):gsub("HTTP/1.1", "HTTP/1.0", 1) },
  -- field syntax (§5.1, §5.2)
  { "whitespace before the colon of Content-Length", 400, post("Content-Length : <CL>\r\n") },
  { "a tab before the colon", 400, post("Content-Length\t: <CL>\r\nX-A: 1\r\n") },
  { "whitespace before the colon of any field", 400, post("X-A : 1\r\nContent-Length: <CL>\r\n") },
  { "Transfer-Encoding with space before colon", 400,
    post("Transfer-Encoding : chunked\r\nContent-Length: <CL>\r\n") },
  { "a space inside a field name", 400, post("X A: 1\r\nContent-Length: <CL>\r\n") },
  { "a line without a colon", 400, post("X-A 1\r\nContent-Length: <CL>\r\n") },
  { "an empty field name", 400, post(": 1\r\nContent-Length: <CL>\r\n") },
  { "a non-token field name", 400, post("X(A): 1\r\nContent-Length: <CL>\r\n") },
  { "obs-fold", 400, post("X-A: 1\r\n 2\r\nContent-Length: <CL>\r\n") },
  { "obs-fold with a tab", 400, post("X-A: 1\r\n\t2\r\nContent-Length: <CL>\r\n") },
  { "a folded Content-Length", 400, post("Content-Length:\r\n <CL>\r\n") },
  { "whitespace before the first field", 400,
    "POST /mcp HTTP/1.1\r\n X-A: 1\r\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  -- line endings and bytes inside values (§2.2, RFC 9110 §5.5)
  { "bare LF everywhere", 400,
    (post("Content-Length: <CL>\r\n"):gsub("\r\n", "\n")) },
  { "one bare LF between fields", 400, post("X-A: 1\nContent-Length: <CL>\r\n") },
  { "a bare LF ending the head", 400, post("Content-Length: <CL>\r\n"):gsub("\r\n\r\n", "\r\n\n", 1) },
  { "a bare LF after the request line", 400,
    "POST /mcp HTTP/1.1\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  { "a bare CR between fields", 400, post("X-A: 1\rContent-Length: <CL>\r\n") },
  { "a CR inside a value", 400, post("X-A: 1\r2\r\nContent-Length: <CL>\r\n") },
  { "a NUL inside a value", 400, post("X-A: 1\0002\r\nContent-Length: <CL>\r\n") },
  { "a NUL inside Content-Length", 400, post("Content-Length: <CL>\0\r\n") },
  { "a control byte inside a value", 400, post("X-A: a\001b\r\nContent-Length: <CL>\r\n") },
  { "DEL inside a value", 400, post("X-A: a\127b\r\nContent-Length: <CL>\r\n") },
  -- request line
  { "two spaces in the request line", 400,
    "POST  /mcp HTTP/1.1\r\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  { "a lower-case version", 400, "POST /mcp http/1.1\r\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  { "HTTP/1.2", 400, "POST /mcp HTTP/1.2\r\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  { "a control byte in the target", 400,
    "POST /m\001cp HTTP/1.1\r\n" .. HEAD .. "Content-Length: <CL>\r\n\r\n<B>" },
  -- chunked bodies (§7.1)
  { "a negative chunk size", 400,
    post("Transfer-Encoding: chunked\r\n", "-<X>\r\n<B>\r\n0\r\n\r\n") },
  { "a 0x chunk size", 400, post("Transfer-Encoding: chunked\r\n", "0x<X>\r\n<B>\r\n0\r\n\r\n") },
  { "a chunk size with a space", 400,
    post("Transfer-Encoding: chunked\r\n", "<X> \r\n<B>\r\n0\r\n\r\n") },
  { "bare LF after a chunk size", 400,
    post("Transfer-Encoding: chunked\r\n", "<X>\n<B>\r\n0\r\n\r\n") },
  { "chunk data longer than its size", 400,
    post("Transfer-Encoding: chunked\r\n", "1\r\n<B>\r\n0\r\n\r\n") },
  { "a huge chunk size", 400,
    post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\n<B>\r\n0\r\n\r\n") },
  { "a folded trailer", 400,
    post("Transfer-Encoding: chunked\r\n", "<X>\r\n<B>\r\n0\r\nX-T: 1\r\n 2\r\n\r\n") },
  -- MCP fields the gateway and the upstream must read alike
  { "two Mcp-Method", 400, post("Mcp-Method: ping\r\nMcp-Method: tools/call\r\nContent-Length: <CL>\r\n") },
  { "two Mcp-Name (letter case differs)", 400,
    post("Mcp-Name: a\r\nMCP-NAME: b\r\nContent-Length: <CL>\r\n") },
  { "two Mcp-Protocol-Version", 400,
    post("MCP-Protocol-Version: 2025-06-18\r\nMcp-Protocol-Version: 2025-06-18\r\n" ..
         "Content-Length: <CL>\r\n") },
  { "two Mcp-Session-Id", 400, post("Mcp-Session-Id: a\r\nMcp-Session-Id: b\r\nContent-Length: <CL>\r\n") },
}

-- Well-formed requests: each must reach the upstream (200, its echo).
local CONTROLS = {
  { "Content-Length", post("Content-Length: <CL>\r\nConnection: close\r\n") },
  { "chunked", chunked("Connection: close\r\n") },
  { "Chunked (codings are case-insensitive)", chunked("Connection: close\r\n"):gsub("chunked", "Chunked", 1) },
  { "chunked with an extension and a trailer",
    post("Transfer-Encoding: chunked\r\nConnection: close\r\n", "<X>;a=1\r\n<B>\r\n0\r\nX-T: 1\r\n\r\n") },
  { "an empty line before the request line", "\r\n" .. post("Content-Length: <CL>\r\nConnection: close\r\n") },
  { "OWS around values, tab inside", post("Content-Length:   <CL>\r\nX-A:\ta\tb\t\r\nConnection: close\r\n") },
  { "obs-text in a value", post("X-A: caf\233\r\nContent-Length: <CL>\r\nConnection: close\r\n") },
}

local dir, up, gw, up_pid, gw_pid

local function expand(raw, host)
  return (raw:gsub("<(%u+)>", { HOST = host, CL = tostring(#BODY), B = BODY,
                                 X = string.format("%x", #BODY) }))
end

-- Sends each raw request over a connection of its own, one after the other,
-- in one run of raw_http.py (starting Python costs more than the exchanges);
-- `host` (default: the gateway) is where they go and what <HOST> expands to.
-- Returns a list of { statuses = {..}, closed = bool, response = text }.
local function send_all(raws, wait, host)
  host = host or gw
  local names = {}
  for i, raw in ipairs(raws) do
    local f = dir .. "/req" .. i .. ".bin"
    keys.write(f, expand(raw, host))
    names[i] = q(f)
  end
  local p = io.popen(CLEAN .. "python3 tests/peers/raw_http.py " .. q(host) .. " " ..
                     tostring(wait or 2) .. " " .. table.concat(names, " "))
  local out = p:read("a")
  p:close()
  local results, pos = {}, 1
  for i = 1, #raws do
    local line, n, from = out:match("^(statuses=[^\n]* bytes=(%d+))\n()", pos)
    assert(line, string.format("raw_http.py answered %d of %d requests", i - 1, #raws))
    local r = { statuses = {}, response = out:sub(from, from + tonumber(n) - 1) }
    for s in line:match("statuses=(%S*)"):gmatch("%d+") do r.statuses[#r.statuses + 1] = tonumber(s) end
    r.closed = line:match("closed=1") ~= nil
    results[i] = r
    pos = from + tonumber(n)
  end
  return results
end

local function send(raw, wait, host)
  return send_all({ raw }, wait, host)[1]
end

-- The answers to every row of CASES, then of CONTROLS: sent together on
-- first use.
local row_answers
local function row_answer(i)
  if not row_answers then
    local raws = {}
    for _, c in ipairs(CASES) do raws[#raws + 1] = c[3] end
    for _, c in ipairs(CONTROLS) do raws[#raws + 1] = c[2] end
    row_answers = send_all(raws)
  end
  return row_answers[i]
end

describe("strict HTTP/1.1 request framing", function()
  setup(function()
    dir = keys.tmpdir()
    local key = keys.gen(dir, "rsa", "rsa")
    keys.write(dir .. "/policy.lua", POLICY)
    up_pid, up = procs.echo_upstream(dir)
    gw_pid = procs.spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream",
      q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"), "--public-key",
      q(key.pub_file) }, " "), dir .. "/gw.out", dir .. "/gw.err")
    gw = procs.wait_for(dir .. "/gw.err", "listening on (127%.0%.0%.1:%d+)", 10)
  end)

  teardown(function()
    procs.stop(gw_pid)
    procs.stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  for i, c in ipairs(CASES) do
    local name, status = c[1], c[2]
    it(string.format("refuses %s with %d and closes", name, status), function()
      local r = row_answer(i)
      assert.are.same({ status }, r.statuses)
      assert.is_true(r.closed)
      assert.is_nil(r.response:find('"echo"', 1, true)) -- never reached the upstream
      assert.truthy(r.response:find("Connection: close\r\n", 1, true))
      assert.truthy(r.response:find('{"jsonrpc":"2.0","id":null,"error":{"code":-32600,', 1, true))
    end)
  end

  for i, c in ipairs(CONTROLS) do
    it("lets a well-formed request through: " .. c[1], function()
      local r = row_answer(#CASES + i)
      assert.are.same({ 200 }, r.statuses)
      assert.truthy(r.response:find('"echo"', 1, true))
    end)
  end

  -- The Host allow-list compares the port. Without --allowed-host the
  -- listener's own names count with its bound port only.
  -- The status each Host header in `hosts` gets from the gateway at `addr`.
  local function host_statuses(hosts, addr)
    local raws = {}
    for i, host in ipairs(hosts) do
      raws[i] = "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: " .. host ..
                "\r\nConnection: close\r\n\r\n"
    end
    local statuses = {}
    for i, r in ipairs(send_all(raws, 2, addr)) do statuses[hosts[i]] = r.statuses[1] end
    return statuses
  end

  it("compares the Host port with the bound port by default", function()
    local port = gw:match(":(%d+)$")
    local want = { ["127.0.0.1:" .. port] = 200, ["LocalHost:" .. port] = 200 }
    for _, bad in ipairs { "127.0.0.1", "localhost", "127.0.0.1:1", "localhost:" .. (port + 1),
                           "localhost:0" .. port, "localhost:", "localhost:" .. port .. "x",
                           "localhost:*", "evil.example:" .. port, ":" .. port } do
      want[bad] = 403
    end
    local hosts = {}
    for host in pairs(want) do hosts[#hosts + 1] = host end
    assert.are.same(want, host_statuses(hosts))
  end)

  it("takes NAME (no port), NAME:PORT and NAME:* entries from --allowed-host", function()
    local err = dir .. "/gw2.err"
    local pid = procs.spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream",
      q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"), "--public-key",
      q(dir .. "/rsa.pub"), "--allowed-host mcp.example.com --allowed-host 'api.example.com:*'",
      "--allowed-host '[::1]:8443'" }, " "), dir .. "/gw2.out", err)
    local ok, e = pcall(function()
      local addr = procs.wait_for(err, "listening on (127%.0%.0%.1:%d+)", 10)
      local port = addr:match(":(%d+)$")
      local want = { ["mcp.example.com"] = 200, ["MCP.example.com"] = 200,
                     ["mcp.example.com:443"] = 403, ["mcp.example.com:" .. port] = 403,
                     ["api.example.com"] = 200, ["api.example.com:1234"] = 200,
                     ["[::1]:8443"] = 200, ["[::1]"] = 403, ["[::1]:443"] = 403,
                     ["127.0.0.1:" .. port] = 403 }
      local hosts = {}
      for host in pairs(want) do hosts[#hosts + 1] = host end
      assert.are.same(want, host_statuses(hosts, addr))
    end)
    procs.stop(pid)
    assert(ok, e)
  end)

  it("times a head sent during a slow answer from when the answer is done", function()
    -- libmicrohttpd reads the start of the second head with the first
    -- request; its --header-timeout (2 s) must not run out while the first
    -- is answered (2 s upstream).
    local err = dir .. "/gw3.err"
    local pid = procs.spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream",
      q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"), "--public-key",
      q(dir .. "/rsa.pub"), "--header-timeout 2" }, " "), dir .. "/gw3.out", err)
    local ok, e = pcall(function()
      local addr = procs.wait_for(err, "listening on (127%.0%.0%.1:%d+)", 10)
      local slow = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' ..
                   '{"name":"slow","arguments":{"seconds":2}}}'
      -- The second asks to close, so the exchange ends with its answer.
      local r = send(post("Content-Length: " .. #slow .. "\r\n", slow) ..
                     "POST /mcp HTTP/1.1\r\nHost: <HOST>\r\n<<PAUSE 2.6>>" ..
                     HEAD:gsub("^Host: <HOST>\r\n", "") ..
                     "Content-Length: <CL>\r\nConnection: close\r\n\r\n<B>", 3, addr)
      assert.are.same({ 200, 200 }, r.statuses)
    end)
    procs.stop(pid)
    assert(ok, e)
  end)

  it("answers the requests before a malformed one first, in order", function()
    local good = post("Content-Length: <CL>\r\n")
    local r = send(good .. good .. post("X-A: 1\nContent-Length: <CL>\r\n"))
    assert.are.same({ 200, 200, 400 }, r.statuses)
    assert.is_true(r.closed)
    local _, echoes = r.response:gsub('"echo"', "")
    assert.are.equal(2, echoes)
  end)

  it("refuses a malformed request that follows a complete one in a later write", function()
    -- Same connection, the bad request arrives while the first is answered.
    local r = send(post("Content-Length: <CL>\r\n") .. "GET /healthz HTTP/1.1\r\nHost: <HOST>\r\n" ..
                   "Content-Length: 0\r\nContent-Length: 0\r\n\r\n")
    assert.are.same({ 200, 400 }, r.statuses)
    assert.is_true(r.closed)
  end)
end)
