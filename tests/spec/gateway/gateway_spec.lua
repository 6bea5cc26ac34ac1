-- gateway_spec.lua -- black-box tests of `scopegate serve`.
--
-- Starts the real binary ($SG_BUILD_DIR/scopegate) in front of
-- tests/peers/echo_upstream.py, both on ephemeral loopback ports, and talks
-- to it with the curl CLI. Tokens are minted at test time with a freshly
-- generated RSA key (core.mint). Every process started here is killed in
-- teardown, and the gateway must exit 0 on SIGTERM without any sanitizer
-- report.
local core = require "scopegate.core"
local keys = require "keys"

local q = keys.q
local CLEAN = keys.CLEAN
local BUILD = assert(os.getenv("SG_BUILD_DIR"), "SG_BUILD_DIR not set (use tests/busted.sh)")
local SCOPEGATE = BUILD .. "/scopegate"

local POLICY = [[
return {
  realm = "echo",
  resource = "https://echo.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  scopes = { ["echo:read"] = "Read", ["echo:write"] = "Write" },
  advertise = { "echo:read" },
  tools = {
    echo = "echo:read", sse = "echo:read", slow = "echo:read", die = "echo:read",
    die_mid_stream = "echo:read", garbage = "echo:read", big = "echo:read", close_after = "echo:read",
    empty = "echo:read", speak_after = "echo:read",
    write = "echo:write",
    both = { all_of = { "echo:read", "echo:write" } },
    ping = "public",
  },
  prompts = { summarize = "echo:read" },
  resources = { ["echo://docs/*"] = "echo:read" },
  default = "deny",
}
]]

local ISS = "https://auth.example.com"
local AUD = "https://echo.example.com/mcp"
local RM = "https://echo.example.com/.well-known/oauth-protected-resource/mcp"
local METADATA = '{"resource":"https://echo.example.com/mcp",' ..
  '"authorization_servers":["https://auth.example.com"],"scopes_supported":["echo:read"],' ..
  '"bearer_methods_supported":["header"],"resource_name":"echo"}'

local procs = require "procs"
local sleep, wait_for, alive, spawn, stop = procs.sleep, procs.wait_for, procs.alive, procs.spawn,
                                            procs.stop
local read_file = procs.read_file

local dir, key, up, gw, up_pid, gw_pid, gw_rc_file, gw_err

-- One HTTP exchange through the curl CLI (procs.http). opts: method, path,
-- headers (list of "Name: value"), body, body_file, max_time, base.
local function http(opts)
  opts.url = (opts.base or ("http://" .. gw)) .. (opts.path or "/mcp")
  opts.scratch = dir
  return procs.http(opts)
end

local function mint(scope, extra)
  local claims = string.format('{"iss":%q,"aud":%q,"sub":"user-1","scope":%q,"exp":%d%s}',
    ISS, AUD, scope, os.time() + 600, extra or "")
  return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = claims })
end

local function rpc(id, method, params)
  local p = params and (',"params":' .. params) or ""
  if id == nil then return string.format('{"jsonrpc":"2.0","method":%q%s}', method, p) end
  return string.format('{"jsonrpc":"2.0","id":%s,"method":%q%s}', id, method, p)
end

local function call(id, tool, args)
  return rpc(id, "tools/call", string.format('{"name":%q%s}', tool,
                                             args and (',"arguments":' .. args) or ""))
end

local function post(body, token, extra_headers)
  local h = { "Content-Type: application/json", "Accept: application/json, text/event-stream" }
  if token then h[#h + 1] = "Authorization: Bearer " .. token end
  for _, x in ipairs(extra_headers or {}) do h[#h + 1] = x end
  return http { method = "POST", headers = h, body = body }
end

local function echo_of(resp)
  local headers = {}
  -- The echo result is JSON; pull the received headers object out of it.
  local obj = resp.body:match('"headers": (%b{})')
  for k, v in (obj or ""):gmatch('"([^"]+)": "([^"]*)"') do headers[k] = v end
  return headers
end

local function start_gateway(extra)
  gw_err = dir .. "/gw.err"
  gw_rc_file = dir .. "/gw.rc"
  os.remove(gw_rc_file)
  local cmd = table.concat({
    q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream", q("http://" .. up .. "/mcp"),
    "--policy", q(dir .. "/policy.lua"), "--public-key", q(key.pub_file), "--issuer", q(ISS),
    "--public-url", q(AUD), "--upstream-timeout-ms 1500 --threads 2", extra or "" }, " ")
  gw_pid = spawn(cmd, dir .. "/gw.out", gw_err, gw_rc_file)
  gw = wait_for(gw_err, "listening on (127%.0%.0%.1:%d+)", 10)
end

local function sanitizer_report(text)
  return text:match("ERROR: AddressSanitizer") or text:match("ERROR: LeakSanitizer") or
         text:match("runtime error:")
end

describe("scopegate serve", function()
  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    keys.write(dir .. "/policy.lua", POLICY)
    up_pid, up = procs.echo_upstream(dir)
    start_gateway()
  end)

  teardown(function()
    stop(gw_pid)
    stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  describe("side routes", function()
    it("answers /healthz", function()
      local r = http { path = "/healthz" }
      assert.are.equal(200, r.status)
      assert.are.equal('{"status":"ok"}', r.body)
      assert.are.equal("application/json", r.headers["content-type"])
    end)

    it("serves RFC 9728 metadata at the root and the endpoint path", function()
      for _, path in ipairs { "/.well-known/oauth-protected-resource",
                              "/.well-known/oauth-protected-resource/mcp" } do
        local r = http { path = path }
        assert.are.equal(200, r.status)
        assert.are.equal(METADATA, r.body)
      end
      assert.are.equal(404, http { path = "/.well-known/oauth-protected-resource/other" }.status)
      assert.are.equal(404, http { path = "/nope" }.status)
      local r = http { path = "/.well-known/oauth-protected-resource", method = "POST", body = "x" }
      assert.are.equal(405, r.status)
    end)
  end)

  describe("limits and transport checks", function()
    it("refuses an oversized body with 413 (declared length and chunked)", function()
      local big = dir .. "/big.json"
      keys.write(big, string.rep("a", 1024 * 1024 + 1))
      local r = http { method = "POST", headers = { "Content-Type: application/json" },
                       body_file = big }
      assert.are.equal(413, r.status)
      r = http { method = "POST", body_file = big,
                 headers = { "Content-Type: application/json", "Transfer-Encoding: chunked" } }
      assert.are.equal(413, r.status)
      assert.are.equal('{"jsonrpc":"2.0","id":null,"error":{"code":-32600,' ..
                       '"message":"Request body too large"}}', r.body)
    end)

    it("answers 413 to a declared oversized body sent without waiting, and the client reads it", function()
      -- Without Expect: 100-continue a client sends its whole body at once.
      -- A gateway that answers on the header and closes leaves unread bytes
      -- in its socket: the kernel then resets the connection, and the
      -- client often loses the answer (curl reports no status at all).
      local big = dir .. "/big3.json"
      keys.write(big, string.rep("a", 3 * 1024 * 1024))
      for i = 1, 5 do
        local r = http { method = "POST", body_file = big,
                         headers = { "Content-Type: application/json", "Expect:" } }
        assert.are.equal(413, r.status, "try " .. i)
      end
      -- A client that waits for 100 Continue gets the 413 instead, at once.
      local r = http { method = "POST", body_file = big,
                       headers = { "Content-Type: application/json", "Expect: 100-continue" } }
      assert.are.equal(413, r.status)
    end)

    -- The default --max-header (libmicrohttpd's per-connection pool) must
    -- hold the largest token the verifier takes (16 KiB) with the other
    -- headers a client sends.
    it("takes a token of the largest size allowed, with 3 KiB of other headers", function()
      local tok = keys.largest_token(function(pad)
        return mint("echo:read", string.format(',"pad":"%s"', pad))
      end)
      local r = post(call(95, "echo"), tok, { "X-Filler: " .. string.rep("f", 3 * 1024) })
      assert.are.equal(200, r.status, r.body)
    end)

    it("refuses oversized headers with 431", function()
      local r = http { method = "POST", body = "{}",
                       headers = { "Content-Type: application/json",
                                   "X-Filler: " .. string.rep("b", 70000) } }
      assert.are.equal(431, r.status)
    end)

    it("refuses a disallowed Origin and Host with 403, allows the public origin", function()
      local r = post(call(1, "echo"), mint("echo:read"), { "Origin: https://evil.example" })
      assert.are.equal(403, r.status)
      assert.are.equal('{"jsonrpc":"2.0","id":null,"error":{"code":-32600,' ..
                       '"message":"Origin not allowed"}}', r.body)
      r = post(call(1, "echo"), mint("echo:read"), { "Host: evil.example" })
      assert.are.equal(403, r.status)
      assert.truthy(r.body:find("Host not allowed", 1, true))
      r = post(call(1, "echo"), mint("echo:read"), { "Origin: https://echo.example.com" })
      assert.are.equal(200, r.status)
    end)

    it("answers a parse error with 400 and -32700", function()
      local r = post('{"jsonrpc":"2.0","id":1,', mint("echo:read"))
      assert.are.equal(400, r.status)
      assert.truthy(r.body:match('^{"jsonrpc":"2.0","id":null,"error":{"code":%-32700,'))
    end)

    it("refuses an unsupported protocol version and a wrong Content-Type", function()
      local r = post(call(1, "echo"), mint("echo:read"), { "MCP-Protocol-Version: 1999-01-01" })
      assert.are.equal(400, r.status)
      r = http { method = "POST", body = call(1, "echo"), headers = { "Content-Type: text/plain" } }
      assert.are.equal(415, r.status)
      assert.are.equal(405, http { method = "PUT", body = "{}" }.status)
    end)
  end)

  describe("authorization", function()
    it("challenges a request without a token with 401, byte for byte", function()
      local r = post(call(7, "echo"))
      assert.are.equal(401, r.status)
      assert.are.equal('Bearer realm="echo", scope="echo:read", resource_metadata="' .. RM .. '"',
                       r.headers["www-authenticate"])
      assert.are.equal('{"jsonrpc":"2.0","id":7,"error":{"code":-32001,' ..
                       '"message":"Authorization required. Scope echo:read is required."}}', r.body)
    end)

    it("answers a token without enough scope with 403 insufficient_scope", function()
      local r = post(call('"abc"', "both"), mint("echo:read"))
      assert.are.equal(403, r.status)
      assert.are.equal('Bearer realm="echo", error="insufficient_scope", ' ..
                       'scope="echo:read echo:write", resource_metadata="' .. RM .. '", ' ..
                       'error_description="Scope echo:write is required."',
                       r.headers["www-authenticate"])
      assert.are.equal('{"jsonrpc":"2.0","id":"abc","error":{"code":-32003,' ..
                       '"message":"Scope echo:write is required."}}', r.body)
    end)

    it("refuses a tampered token with 401 invalid_token", function()
      local tok = mint("echo:read echo:write")
      local h, p, s = tok:match("^([^.]+)%.([^.]+)%.(.+)$")
      local evil = h .. "." .. keys.b64url(keys.unb64url(p):gsub("user%-1", "admin12")) .. "." .. s
      local r = post(call(1, "echo"), evil)
      assert.are.equal(401, r.status)
      assert.truthy(r.headers["www-authenticate"]:find('error="invalid_token"', 1, true))
      r = post(call(1, "echo"), nil, { "Authorization: Basic dXNlcjpwYXNz" })
      assert.are.equal(401, r.status)
    end)

    it("denies a batch when one element is not allowed, naming every scope", function()
      local body = "[" .. call(1, "echo") .. "," .. call(2, "write") .. "]"
      local r = post(body, mint("echo:read"))
      assert.are.equal(403, r.status)
      assert.truthy(r.headers["www-authenticate"]:find('scope="echo:read echo:write"', 1, true))
      r = post(body, mint("echo:read echo:write"))
      assert.are.equal(200, r.status)
      assert.truthy(r.body:find('"id": 2', 1, true))
    end)

    it("lets public tools through without a token", function()
      local r = post(call(3, "ping"))
      assert.are.equal(200, r.status)
    end)
  end)

  describe("forwarding", function()
    it("never forwards Authorization; passes the allow-listed headers both ways", function()
      local r = post(rpc(1, "initialize", '{"protocolVersion":"2025-06-18"}'),
                     mint("echo:read"),
                     { "Mcp-Session-Id: s-42", "MCP-Protocol-Version: 2025-06-18",
                       "Last-Event-ID: ev-9", "Cookie: secret=1", "X-Custom: no" })
      assert.are.equal(200, r.status)
      assert.are.equal("sess-echo-1", r.headers["mcp-session-id"])
      assert.are.equal("application/json", r.headers["content-type"])
      local seen = echo_of(r)
      assert.is_nil(seen["authorization"])
      assert.is_nil(seen["cookie"])
      assert.is_nil(seen["x-custom"])
      assert.are.equal("s-42", seen["mcp-session-id"])
      assert.are.equal("2025-06-18", seen["mcp-protocol-version"])
      assert.are.equal("ev-9", seen["last-event-id"])
      assert.are.equal("application/json", seen["content-type"])
      assert.are.equal("application/json, text/event-stream", seen["accept"])
    end)

    it("answers notifications with 202 and no body", function()
      local r = post(rpc(nil, "notifications/initialized"), mint("echo:read"))
      assert.are.equal(202, r.status)
      assert.are.equal("", r.body)
    end)

    it("streams SSE through as it arrives, id: and retry: lines intact", function()
      local r = post(call('"s1"', "sse", '{"pause":1.0}'), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal("text/event-stream", r.headers["content-type"])
      assert.truthy(r.body:match("^retry: 1500\n\nid: ev%-1\nevent: message\ndata: {[^\n]*}\n\n" ..
                                 "id: ev%-2\nevent: message\ndata: {[^\n]*\"id\": \"s1\"[^\n]*}\n\n$"))
      -- The first event reached the client a second before the end.
      assert.is_true(r.t_total - r.t_first >= 0.8, "not streamed: " .. r.t_first .. " " .. r.t_total)
    end)

    it("streams a large body intact", function()
      local r = post(call(5, "big", '{"bytes":3000000}'), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal(3000000, select(2, r.body:gsub("x", "")))
    end)

    it("passes GET streams and DELETE through", function()
      local tok = mint("echo:read")
      local r = http { headers = { "Authorization: Bearer " .. tok } }
      assert.are.equal(200, r.status)
      assert.truthy(r.body:match("^retry: 2000\n\nid: get%-1\n"))
      r = http { method = "DELETE", headers = { "Authorization: Bearer " .. tok } }
      assert.are.equal(200, r.status)
      r = http { headers = { "Authorization: Bearer " .. tok, "MCP-Protocol-Version: 2026-07-28" } }
      assert.are.equal(405, r.status)
    end)
  end)

  describe("list filtering", function()
    local TOOLS_READ = '{"jsonrpc":"2.0","id":%s,"result":{"tools":[' ..
      '{"name":"echo","description":"Echo","inputSchema":{"type":"object"},' ..
      '"annotations":{"readOnlyHint":true,"oauthScope":"echo:read"}},' ..
      '{"name":"ping","inputSchema":{"type":"object"},"annotations":{}}],' ..
      '"nextCursor":"next-page"}}'

    it("shows only the tools the caller may call, annotated with their scopes", function()
      local r = post(rpc("12345678901234567890", "tools/list"), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal(TOOLS_READ:format("12345678901234567890"), r.body)
      r = post(rpc(2, "tools/list"), mint("echo:read echo:write"))
      assert.truthy(r.body:find('{"name":"both","inputSchema":{"type":"object"},' ..
        '"annotations":{"oauthScope":{"allOf":["echo:read","echo:write"]}}}', 1, true))
      assert.truthy(r.body:find('"name":"write"', 1, true))
      assert.falsy(r.body:find('"secret"', 1, true))
    end)

    it("filters a list answered as SSE, keeping the other events", function()
      local r = post(rpc(3, "tools/list", '{"cursor":"sse"}'), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal("text/event-stream", r.headers["content-type"])
      local note = '{"jsonrpc": "2.0", "method": "notifications/message", ' ..
                   '"params": {"level": "info", "data": "listing"}}'
      assert.are.equal("retry: 500\n\nid: l-1\nevent: message\ndata: " .. note .. "\n\n" ..
                       "id: l-2\nevent: message\ndata: " .. TOOLS_READ:format("3") .. "\n\n",
                       r.body)
    end)

    it("passes an SSE priming event (empty data) through and filters the rest", function()
      local r = post(rpc(7, "tools/list", '{"cursor":"sse-primed"}'), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal("id: p-0\ndata: \n\n", r.body:sub(1, 16))
      assert.truthy(r.body:find(TOOLS_READ:format("7"), 1, true))
    end)

    it("filters prompts and resources; anonymous callers see only public tools", function()
      local r = post(rpc(4, "prompts/list"), mint("echo:read"))
      assert.are.equal('{"jsonrpc":"2.0","id":4,"result":{"prompts":[{"name":"summarize"}],' ..
                       '"nextCursor":"next-page"}}', r.body)
      r = post(rpc(5, "resources/list"), mint("echo:read"))
      assert.are.equal('{"jsonrpc":"2.0","id":5,"result":{"resources":' ..
                       '[{"uri":"echo://docs/1","name":"doc"}],"nextCursor":"next-page"}}', r.body)
      r = post(rpc(6, "tools/list"))
      assert.are.equal(200, r.status)
      assert.are.equal('{"jsonrpc":"2.0","id":6,"result":{"tools":[{"name":"ping",' ..
                       '"inputSchema":{"type":"object"},"annotations":{}}],' ..
                       '"nextCursor":"next-page"}}', r.body)
    end)
  end)

  describe("lists in batches, templates and 2026-07-28", function()
    it("filters every list result inside a batch answer, ids kept exact", function()
      local batch = "[" .. rpc("98765432109876543210", "tools/list") .. "," .. call(8, "echo") ..
        "," .. rpc('"p"', "prompts/list") .. "]"
      local r = post(batch, mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.truthy(r.body:find('"id":98765432109876543210,', 1, true))
      assert.truthy(r.body:find('"name":"echo"', 1, true))
      assert.falsy(r.body:find('"name":"secret"', 1, true))
      assert.falsy(r.body:find('"name":"write"', 1, true))
      assert.truthy(r.body:find('"prompts":[{"name":"summarize"}]', 1, true))
      assert.truthy(r.body:find('"id":8,', 1, true))
    end)

    it("filters resource templates by the resource patterns", function()
      local r = post(rpc(9, "resources/templates/list"), mint("echo:read"))
      assert.are.equal('{"jsonrpc":"2.0","id":9,"result":{"resourceTemplates":' ..
        '[{"uriTemplate":"echo://docs/{id}","name":"docs"}],"nextCursor":"next-page"}}', r.body)
    end)

    local V = "MCP-Protocol-Version: 2026-07-28"
    it("marks filtered lists private to the caller under 2026-07-28", function()
      local r = post(rpc(10, "tools/list"), mint("echo:read"), { V, "Mcp-Method: tools/list" })
      assert.are.equal(200, r.status)
      assert.truthy(r.body:find('"nextCursor":"next-page","cacheScope":"private"}', 1, true))
      r = post(rpc(11, "tools/list"), mint("echo:read"))
      assert.falsy(r.body:find("cacheScope", 1, true))
    end)

    it("refuses Mcp-Method / Mcp-Name headers that disagree with the body (-32020)", function()
      local r = post(call(12, "echo"), mint("echo:read"), { V, "Mcp-Method: tools/list" })
      assert.are.equal(400, r.status)
      assert.truthy(r.body:find('{"jsonrpc":"2.0","id":12,"error":{"code":-32020,', 1, true))
      assert.truthy(r.body:find("Mcp-Method", 1, true))
      r = post(call(13, "echo"), mint("echo:read"), { V, "Mcp-Method: tools/call", "Mcp-Name: write" })
      assert.are.equal(400, r.status)
      assert.truthy(r.body:find('"code":-32020', 1, true))
      r = post(call(14, "echo"), mint("echo:read"), { V, "Mcp-Method: tools/call", "Mcp-Name: echo" })
      assert.are.equal(200, r.status)
    end)
  end)

  describe("upstream failures", function()
    it("answers 502 with the request id when the upstream drops the connection", function()
      local r = post(call(21, "die"), mint("echo:read"))
      assert.are.equal(502, r.status)
      assert.are.equal('{"jsonrpc":"2.0","id":21,"error":{"code":-32603,' ..
                       '"message":"Upstream server sent an invalid or truncated response"}}', r.body)
      r = post(call(22, "garbage"), mint("echo:read"))
      assert.are.equal(502, r.status)
      assert.truthy(r.body:find('"id":22', 1, true))
    end)

    it("passes an empty answer through, and answers 502 for an empty list (fuzz_proxy found it)", function()
      local r = post(call(23, "empty"), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.are.equal("", r.body)
      r = post(rpc(24, "tools/list", '{"cursor":"empty"}'), mint("echo:read"))
      assert.are.equal(502, r.status)
      assert.truthy(r.body:find('"id":24', 1, true), r.body)
    end)

    it("ends a stream that dies mid-way with an error event carrying the id", function()
      local r = post(call('"m1"', "die_mid_stream"), mint("echo:read"))
      assert.are.equal(200, r.status)
      assert.truthy(r.body:find("id: ev-1\n", 1, true))
      assert.truthy(r.body:match('\n\nevent: message\ndata: {"jsonrpc":"2.0","id":"m1",' ..
                                 '"error":{"code":%-32603,[^\n]*}\n\n$'))
    end)

    it("replaces a pooled upstream connection that the upstream closed in silence", function()
      local tok = mint("echo:read")
      for i = 1, 3 do
        local r = post(call(70 + i, "close_after"), tok)
        assert.are.equal(200, r.status)
        r = post(call(80 + i, "echo"), tok)
        assert.are.equal(200, r.status, r.body)
        assert.truthy(r.body:find('"id": ' .. (80 + i), 1, true) or r.body:find('"id":' .. (80 + i), 1, true))
      end
    end)

    -- An idle pooled connection stays in the gateway's epoll set (no
    -- epoll_ctl per forwarded request). When the upstream closes it, the
    -- gateway must close its end at once: left open it sits in CLOSE_WAIT,
    -- and, watched level-triggered, wakes the worker in a busy loop.
    it("closes a pooled connection as soon as the upstream closes it, without spinning", function()
      local up_port = tonumber(up:match(":(%d+)$"))
      local function close_wait()
        local n = 0
        for line in io.lines("/proc/net/tcp") do
          local rport, st = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) (%x%x)")
          if rport and tonumber(rport, 16) == up_port and st == "08" then n = n + 1 end
        end
        return n
      end
      local function cpu_ticks()
        local stat = read_file("/proc/" .. gw_pid .. "/stat")
        local fields = {}
        for f in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
        return tonumber(fields[12]) + tonumber(fields[13]) -- utime + stime
      end
      assert.are.equal(200, post(call(91, "close_after"), mint("echo:read")).status)
      local waited = 0
      while close_wait() > 0 and waited < 2 do
        sleep(0.05)
        waited = waited + 0.05
      end
      assert.are.equal(0, close_wait(), "the gateway kept a connection the upstream closed")
      local before = cpu_ticks()
      sleep(1)
      local used = cpu_ticks() - before
      assert(used < 30, "an idle gateway used " .. used .. " ticks of CPU in 1 s")
      assert.are.equal(200, post(call(92, "echo"), mint("echo:read")).status)
    end)

    -- Bytes on a connection between requests answer nothing the gateway
    -- asked: reused, the connection would hand them to the next request
    -- sent on it (another caller's, perhaps) as its answer.
    it("never reuses a pooled connection the upstream spoke on unasked", function()
      local tok = mint("echo:read")
      for i = 1, 3 do
        local r = post(call(100 + i, "speak_after", '{"next_id":' .. (110 + i) .. '}'), tok)
        assert.are.equal(200, r.status)
        sleep(0.3)
        r = post(call(110 + i, "echo"), tok)
        assert.are.equal(200, r.status, r.body)
        assert.is_nil(r.body:find("UNASKED", 1, true), r.body)
        assert.truthy(r.body:find('"echo"', 1, true), r.body)
      end
    end)

    -- A worker writes the requests it decided in one round of its loop
    -- together, at the round's end (proxy_http1.c's write queue). Many
    -- clients at once put many requests in one queue: every one must be
    -- written, on its own connection, and answered with its own id.
    it("forwards every request of a burst from many clients, each to its own answer", function()
      local script = dir .. "/burst.py"
      keys.write(script, [[
import socket, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
token, clients, each = sys.argv[2], 24, 10
ok, bad = [], []
def client(c):
    s = socket.create_connection((host, int(port)), timeout=10)
    f = s.makefile("rb")
    for k in range(each):
        rid = c * 1000 + k
        body = ('{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo"}}' % rid).encode()
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: " + sys.argv[1].encode() +
                  b"\r\nContent-Type: application/json\r\n"
                  b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer " +
                  token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, length = f.readline(), 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""): break
            if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
        answer = f.read(length)
        good = b" 200 " in status and (b'"id": %d,' % rid in answer or b'"id":%d,' % rid in answer)
        (ok if good else bad).append(rid)
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
print("ok", len(ok), "bad", len(bad))
]])
      local p = io.popen(CLEAN .. "timeout 30 python3 " .. q(script) .. " " .. q(gw) .. " " ..
                         q(mint("echo:read")) .. " 2>&1")
      local out = p:read("a")
      p:close()
      assert.are.equal("ok 240 bad 0\n", out)
    end)

    it("answers 504 with the request id when the upstream is slow", function()
      local r = post(call(23, "slow", '{"seconds":4}'), mint("echo:read"))
      assert.are.equal(504, r.status)
      assert.are.equal('{"jsonrpc":"2.0","id":23,"error":{"code":-32603,' ..
                       '"message":"Upstream server timed out"}}', r.body)
      assert.is_true(r.t_total < 3.5)
    end)

    it("survives a client that goes away while the upstream works", function()
      local r = post(call(24, "slow", '{"seconds":1}'), mint("echo:read"))
      assert.are.equal(200, r.status) -- under the 1.5 s upstream timeout
      local h = { "Content-Type: application/json", "Authorization: Bearer " .. mint("echo:read") }
      r = http { method = "POST", headers = h, body = call(25, "slow", '{"seconds":1}'),
                 max_time = 0.3 }
      assert.is_nil(r.status == 200 and r.status or nil)
      assert.are.equal(200, http { path = "/healthz" }.status)
      assert.are.equal(200, post(call(26, "echo"), mint("echo:read")).status)
    end)

    it("answers 502 when the upstream is down", function()
      local g2_err, g2_rc = dir .. "/gw2.err", dir .. "/gw2.rc"
      local pid = spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0",
        "--upstream http://127.0.0.1:9/mcp --policy", q(dir .. "/policy.lua"),
        "--public-key", q(key.pub_file), "--issuer", q(ISS), "--public-url", q(AUD) }, " "),
        dir .. "/gw2.out", g2_err, g2_rc)
      local ok, err = pcall(function()
        local addr = wait_for(g2_err, "listening on (127%.0%.0%.1:%d+)", 10)
        local r = http { base = "http://" .. addr, method = "POST", body = call(31, "echo"),
                         headers = { "Content-Type: application/json",
                                     "Authorization: Bearer " .. mint("echo:read") } }
        assert.are.equal(502, r.status)
        assert.are.equal('{"jsonrpc":"2.0","id":31,"error":{"code":-32603,' ..
                         '"message":"Upstream server unreachable"}}', r.body)
      end)
      stop(pid)
      assert(ok, err)
    end)
  end)

  describe("connection and time limits", function()
    it("answers 503 beyond --max-connections and 408 for a slow upload", function()
      local g_err = dir .. "/gw3.err"
      local pid = spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0",
        "--upstream", q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"),
        "--public-key", q(key.pub_file), "--issuer", q(ISS), "--public-url", q(AUD),
        "--max-connections 1 --timeout 1" }, " "), dir .. "/gw3.out", g_err, dir .. "/gw3.rc")
      local ok, err = pcall(function()
        local addr = wait_for(g_err, "listening on (127%.0%.0%.1:%d+)", 10)
        -- One connection held open by a slow upstream answer...
        local body_file = dir .. "/slow.json"
        keys.write(body_file, call(41, "slow", '{"seconds":1.5}'))
        local bg = spawn("exec curl -s -o /dev/null -H 'Content-Type: application/json' " ..
                         "-H " .. q("Authorization: Bearer " .. mint("echo:read")) ..
                         " --data-binary @" .. q(body_file) .. " " .. q("http://" .. addr .. "/mcp"),
                         "/dev/null", "/dev/null")
        sleep(0.4)
        -- ...so the next one is refused.
        local r = http { base = "http://" .. addr, path = "/healthz" }
        assert.are.equal(503, r.status)
        assert.are.equal('{"jsonrpc":"2.0","id":null,"error":{"code":-32603,' ..
                         '"message":"Too many connections"}}', r.body)
        for _ = 1, 60 do
          if not alive(bg) then break end
          sleep(0.05)
        end
        -- A body trickling in for longer than --timeout gets 408 (curl's
        -- --limit-rate sends small bodies in one burst, so a socket does it).
        keys.write(dir .. "/trickle.py", [[
import socket, sys, time
host, port = sys.argv[1].split(":")
body = sys.argv[2].encode()
s = socket.create_connection((host, int(port)))
s.sendall(b"POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % (sys.argv[1].encode(), len(body)))
for i in range(0, len(body), 15):
    s.sendall(body[i:i + 15])
    time.sleep(0.3)
print(s.recv(200).split(b"\r\n")[0].decode())
]])
        local p = io.popen(CLEAN .. "python3 " .. q(dir .. "/trickle.py") .. " " .. q(addr) ..
                           " " .. q(call(42, "echo")))
        local code = p:read("a"):match("^HTTP/1.1 (%d+)")
        p:close()
        assert.are.equal("408", code)
      end)
      stop(pid)
      assert(ok, err)
    end)
  end)

  describe("an https:// upstream (libcurl)", function()
    it("verifies it with --upstream-ca and streams through it; refuses an unverified one", function()
      keys.run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 " ..
        "-addext subjectAltName=IP:127.0.0.1 -keyout " .. q(dir .. "/tls.key") .. " -out " ..
        q(dir .. "/tls.crt"))
      local tls_pid = spawn("exec python3 tests/peers/echo_upstream.py --port 0 --tls " ..
        q(dir .. "/tls.crt") .. " " .. q(dir .. "/tls.key"), dir .. "/tls.out", dir .. "/tls.err")
      local pids = { tls_pid }
      local ok, err = pcall(function()
        local tls_up = wait_for(dir .. "/tls.out", "listening on (127%.0%.0%.1:%d+)", 10)
        local function gateway(n, extra)
          local g_err = dir .. "/gw-tls" .. n .. ".err"
          pids[#pids + 1] = spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0",
            "--upstream", q("https://" .. tls_up .. "/mcp"), "--policy", q(dir .. "/policy.lua"),
            "--public-key", q(key.pub_file), "--issuer", q(ISS), "--public-url", q(AUD), extra }, " "),
            dir .. "/gw-tls" .. n .. ".out", g_err, "/dev/null")
          return wait_for(g_err, "listening on (127%.0%.0%.1:%d+)", 10)
        end
        local addr = gateway(1, "--upstream-ca " .. q(dir .. "/tls.crt"))
        local h = { "Content-Type: application/json", "Authorization: Bearer " .. mint("echo:read") }
        local r = http { base = "http://" .. addr, method = "POST", body = call(61, "echo"), headers = h }
        assert.are.equal(200, r.status)
        assert.is_nil(echo_of(r)["authorization"])
        r = http { base = "http://" .. addr, method = "POST", body = call(62, "sse"), headers = h }
        assert.are.equal(200, r.status)
        assert.truthy(r.body:find("retry: 1500\n\nid: ev-1\n", 1, true))
        addr = gateway(2, "")
        r = http { base = "http://" .. addr, method = "POST", body = call(63, "echo"), headers = h }
        assert.are.equal(502, r.status)
        assert.truthy(r.body:find('"id":63', 1, true))
        local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve --listen 127.0.0.1:0 --upstream " ..
          q("https://" .. tls_up .. "/mcp") .. " --policy " .. q(dir .. "/policy.lua") ..
          " --public-key " .. q(key.pub_file) .. " --upstream-ca /nonexistent/ca.pem 2>&1; echo rc=$?")
        local out = p:read("a")
        p:close()
        assert.truthy(out:find("--upstream-ca /nonexistent/ca.pem: No such file or directory", 1, true), out)
        assert.truthy(out:find("rc=1", 1, true), out)
      end)
      for _, pid in ipairs(pids) do stop(pid) end
      assert(ok, err)
    end)
  end)

  describe("annotation shapes and verified identity", function()
    it("annotates with securitySchemes and sends claims upstream, never the client's copy", function()
      local g_err = dir .. "/gw4.err"
      local pid = spawn(table.concat({ q(SCOPEGATE), "serve --listen 127.0.0.1:0",
        "--upstream", q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"),
        "--public-key", q(key.pub_file), "--issuer", q(ISS), "--public-url", q(AUD),
        "--annotate securitySchemes --identity-header X-User-Sub=sub",
        "--identity-header X-Tenant=tenant --identity-header X-Bad=bad" }, " "),
        dir .. "/gw4.out", g_err, dir .. "/gw4.rc")
      local ok, err = pcall(function()
        local addr = wait_for(g_err, "listening on (127%.0%.0%.1:%d+)", 10)
        local function post4(body, token, extra)
          local h = { "Content-Type: application/json", "Authorization: Bearer " .. token }
          for _, x in ipairs(extra or {}) do h[#h + 1] = x end
          return http { base = "http://" .. addr, method = "POST", headers = h, body = body }
        end
        local r = post4(rpc(1, "tools/list"), mint("echo:read echo:write"))
        assert.truthy(r.body:find('{"name":"both","inputSchema":{"type":"object"},"securitySchemes":' ..
          '[{"type":"oauth2","scopes":["echo:read","echo:write"]}]}', 1, true))
        assert.truthy(r.body:find('"securitySchemes":[{"type":"noauth"}]', 1, true))
        assert.falsy(r.body:find("oauthScope", 1, true))
        -- A claim with a line break never becomes a header; the client's own
        -- X-User-Sub is dropped and replaced by the verified one.
        r = post4(call(2, "echo"), mint("echo:read", ',"tenant":"acme","bad":"a\\r\\nX-Evil: 1"'),
          { "X-User-Sub: admin", "X-Evil: 1" })
        assert.are.equal(200, r.status)
        local got = echo_of(r)
        assert.are.equal("user-1", got["x-user-sub"])
        assert.are.equal("acme", got["x-tenant"])
        assert.is_nil(got["x-bad"])
        assert.is_nil(got["x-evil"])
      end)
      stop(pid)
      assert(ok, err)
    end)

    it("refuses identity headers it owns or forwards, and unknown annotation shapes", function()
      for _, bad in ipairs { "Authorization=sub", "Mcp-Session-Id=sub", "X User=sub", "X-User=", "=sub" } do
        local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve --listen 127.0.0.1:0 --upstream " ..
          "http://127.0.0.1:9/mcp --policy " .. q(dir .. "/policy.lua") .. " --public-key " ..
          q(key.pub_file) .. " --identity-header " .. q(bad) .. " 2>&1; echo rc=$?")
        local out = p:read("a")
        p:close()
        assert.truthy(out:find("rc=2", 1, true), out)
        assert.truthy(out:find("--identity-header", 1, true), out)
      end
      local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve --listen 127.0.0.1:0 --upstream " ..
        "http://127.0.0.1:9/mcp --policy " .. q(dir .. "/policy.lua") .. " --public-key " ..
        q(key.pub_file) .. " --annotate fancy 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      assert.truthy(out:find("--annotate must be oauthScope, securitySchemes or none", 1, true), out)
      assert.truthy(out:find("rc=2", 1, true))
    end)
  end)

  describe("command line", function()
    local function run_serve(args)
      local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve " .. args .. " 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      return tonumber(out:match("rc=(%d+)%s*$")), out
    end
    local base = function()
      return "--listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy " ..
             q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file)
    end

    it("reads --config FILE as flags, with the command line overriding it", function()
      local cfg = dir .. "/serve.lua"
      keys.write(cfg, ("return { listen = '127.0.0.1:1', upstream = %q, policy = %q,\n" ..
        "  public_key = %q, issuer = %q, public_url = %q, threads = 1,\n" ..
        "  allowed_origin = { 'https://app.example.com' } }\n"):format(
        "http://" .. up .. "/mcp", dir .. "/policy.lua", key.pub_file, ISS, AUD))
      local g_err = dir .. "/gw5.err"
      local pid = spawn(q(SCOPEGATE) .. " serve --config " .. q(cfg) .. " --listen 127.0.0.1:0",
                        dir .. "/gw5.out", g_err, dir .. "/gw5.rc")
      local ok, err = pcall(function()
        local addr = wait_for(g_err, "listening on (127%.0%.0%.1:%d+)", 10)
        local h = { "Content-Type: application/json", "Authorization: Bearer " .. mint("echo:read") }
        local r = http { base = "http://" .. addr, method = "POST", body = call(51, "echo"),
                         headers = { h[1], h[2], "Origin: https://app.example.com" } }
        assert.are.equal(200, r.status)
        r = http { base = "http://" .. addr, method = "POST", body = call(52, "echo"),
                   headers = { h[1], h[2], "Origin: https://evil.example.com" } }
        assert.are.equal(403, r.status)
      end)
      stop(pid)
      assert(ok, err)
      for body, want in pairs {
        ["return { lisen = 'x' }"] = "unknown setting 'lisen'",
        ["return { threads = 0 }"] = "--threads needs a whole number from 1 to 256",
        ["return { listen = 1.5 }"] = "listen must be a string, an integer or a list",
        ["return {"] = "--config " .. cfg .. ":1:",
      } do
        keys.write(cfg, body)
        local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve --config " .. q(cfg) .. " 2>&1; echo rc=$?")
        local out = p:read("a")
        p:close()
        assert.truthy(out:find(want, 1, true), out)
        assert.truthy(out:find("rc=2", 1, true), out)
      end
    end)

    it("exits non-zero with a clear message on bad flags", function()
      local rc, out = run_serve(base() .. " --bogus 1")
      assert.are.equal(2, rc)
      assert.truthy(out:find("unknown flag '--bogus'", 1, true))
      rc, out = run_serve(base() .. " --max-body lots")
      assert.are.equal(2, rc)
      assert.truthy(out:find("--max-body needs a whole number", 1, true))
      rc, out = run_serve(base() .. " --allowed-host 'mcp.example.com:https'")
      assert.are.equal(2, rc)
      assert.truthy(out:find("--allowed-host needs NAME, NAME:PORT, NAME:* or *", 1, true))
      rc, out = run_serve(base() .. " --min-body-rate fast")
      assert.are.equal(2, rc)
      assert.truthy(out:find("--min-body-rate needs a whole number", 1, true))
      rc, out = run_serve("--listen 127.0.0.1:0")
      assert.are.equal(2, rc)
      assert.truthy(out:find("--upstream is required", 1, true))
    end)

    it("exits non-zero for an unreadable key, unreachable JWKS or a broken policy", function()
      local rc, out = run_serve("--listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp " ..
                                "--policy " .. q(dir .. "/policy.lua") .. " --public-key /nonexistent.pem")
      assert.are.equal(1, rc)
      assert.truthy(out:find("--public-key /nonexistent.pem", 1, true))
      rc, out = run_serve("--listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy " ..
                          q(dir .. "/policy.lua") .. " --jwks http://127.0.0.1:9/jwks.json")
      assert.are.equal(1, rc)
      assert.truthy(out:find("--jwks http://127.0.0.1:9/jwks.json", 1, true))
      keys.write(dir .. "/broken.lua", "return { tools = { x = { al_of = { 'a' } } } }")
      rc, out = run_serve("--listen 127.0.0.1:0 --upstream http://127.0.0.1:9/mcp --policy " ..
                          q(dir .. "/broken.lua") .. " --public-key " .. q(key.pub_file) ..
                          " --audience " .. q(AUD))
      assert.are.equal(1, rc)
      assert.truthy(out:find("broken.lua", 1, true))
    end)
  end)

  describe("shutdown", function()
    it("exits 0 on SIGTERM with no sanitizer report, answering in-flight requests", function()
      local body_file, out_file = dir .. "/inflight.json", dir .. "/inflight.out"
      keys.write(body_file, call(51, "slow", '{"seconds":1.2}'))
      local bg = spawn("exec curl -s -w ' %{http_code}' -H 'Content-Type: application/json' " ..
                       "-H " .. q("Authorization: Bearer " .. mint("echo:read")) ..
                       " --data-binary @" .. q(body_file) .. " " .. q("http://" .. gw .. "/mcp"),
                       out_file, "/dev/null")
      sleep(0.5)
      assert.is_true(stop(gw_pid, 10))
      for _ = 1, 40 do
        if not alive(bg) then break end
        sleep(0.05)
      end
      assert.are.equal('{"jsonrpc":"2.0","id":51,"error":{"code":-32603,' ..
                       '"message":"Gateway is shutting down"}} 503', read_file(out_file))
      gw_pid = nil
      for _ = 1, 40 do
        if read_file(gw_rc_file) then break end
        sleep(0.05)
      end
      local log = read_file(gw_err) or ""
      assert.is_nil(sanitizer_report(log), log)
      assert.are.equal("0", (read_file(gw_rc_file) or ""):match("%d+"), log)
    end)
  end)
end)
