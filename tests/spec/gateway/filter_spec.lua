-- filter_spec.lua -- black-box tests that list filtering fails closed and
-- that resource URIs are matched (and forwarded) in their normal form.
--
-- Starts the real binary in front of tests/peers/echo_upstream.py and has
-- the upstream answer list requests with scripted bytes (params._meta.raw):
-- framing details of SSE (BOM, CR-only lines, "data:" without a space,
-- multi-line data, comments), JSON the strict pre-scan refuses (duplicate
-- keys) and answers that do not account for every list request. Each must
-- come back filtered, or as 502 (JSON) / an error event (SSE): never with
-- the upstream's unfiltered list. Resource URIs with dot segments or
-- percent-encodings are decided on their RFC 3986 normal form: refused when
-- they have none or are not in it, dropped from lists when they have none.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local SCOPEGATE = procs.SCOPEGATE
local ISS, AUD = "https://auth.example.com", "https://echo.example.com/mcp"

local POLICY = [[
return {
  realm = "echo",
  resource = "https://echo.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  scopes = { ["echo:read"] = "Read", ["echo:admin"] = "Admin" },
  tools = { echo = "echo:read", secret = "echo:admin" },
  prompts = { summarize = "echo:read" },
  resources = {
    ["journal://entries/*"] = "echo:read", ["journal://admin/*"] = "echo:admin",
    ["journal://fn/*"] = function(req) return req.name == "journal://fn/a" and "echo:read" or "deny" end,
  },
  default = "deny",
}
]]

local dir, key, up, gw, up_pid, gw_pid, gw_err

local function mint(scope)
  local claims = string.format('{"iss":%q,"aud":%q,"sub":"user-1","scope":%q,"exp":%d}', ISS, AUD,
                               scope, os.time() + 600)
  return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = claims })
end

local function post(body, token)
  return procs.http {
    url = "http://" .. gw .. "/mcp", scratch = dir, method = "POST", body = body,
    headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                "Authorization: Bearer " .. (token or mint("echo:read")) },
  }
end

-- A list request whose upstream answer is exactly `body`.
local function scripted(id, method, ctype, body)
  return string.format('{"jsonrpc":"2.0","id":%s,"method":%q,"params":{"_meta":{"raw":%s}}}', id,
                       method, keys.json { type = ctype, body = body })
end

local TOOLS = '{"tools":[{"name":"echo","inputSchema":{"type":"object"}},' ..
              '{"name":"secret","inputSchema":{"type":"object"}}]}'
local function resp(id, result) return '{"jsonrpc":"2.0","id":' .. id .. ',"result":' .. result .. '}' end
local NOTE = '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}'

-- The answer kept the allowed tool and lost the other.
local function filtered(r)
  assert.are.equal(200, r.status, r.body)
  assert.truthy(r.body:find('"name":"echo"', 1, true), r.body)
  assert.falsy(r.body:find("secret", 1, true), r.body)
end

-- A JSON answer that was refused.
local function refused_json(r, id)
  assert.are.equal(502, r.status, r.body)
  assert.falsy(r.body:find("secret", 1, true), r.body)
  assert.truthy(r.body:match('^{"jsonrpc":"2.0","id":' .. id .. ',"error":{"code":%-32603,'), r.body)
end

-- An SSE answer replaced by an error event for the list request.
local function refused_sse(r, id)
  assert.are.equal(200, r.status, r.body)
  assert.are.equal("text/event-stream", r.headers["content-type"])
  assert.falsy(r.body:find("secret", 1, true), r.body)
  assert.truthy(r.body:match('^event: message\ndata: {"jsonrpc":"2.0","id":' .. id ..
                             ',"error":{"code":%-32603,"message":"[^"\n]*"}}\n\n$'), r.body)
end

describe("upstream answers and resource URIs", function()
  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    keys.write(dir .. "/policy.lua", POLICY)
    up_pid, up = procs.echo_upstream(dir)
    gw_err = dir .. "/gw.err"
    gw_pid = procs.spawn(table.concat({
      q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream", q("http://" .. up .. "/mcp"),
      "--policy", q(dir .. "/policy.lua"), "--public-key", q(key.pub_file), "--issuer", q(ISS),
      "--public-url", q(AUD), "--upstream-timeout-ms 1500 --threads 1" }, " "),
      dir .. "/gw.out", gw_err, dir .. "/gw.rc")
    gw = procs.wait_for(gw_err, "listening on (127%.0%.0%.1:%d+)", 10)
  end)

  teardown(function()
    assert.is_true(procs.stop(gw_pid))
    procs.stop(up_pid)
    local err = procs.read_file(gw_err) or ""
    assert.falsy(err:match("ERROR: AddressSanitizer") or err:match("runtime error:"), err)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  describe("SSE framing as the specification reads it", function()
    it("filters a stream that begins with a UTF-8 byte order mark", function()
      local r = post(scripted(1, "tools/list", "text/event-stream",
                              "\xEF\xBB\xBFdata: " .. resp(1, TOOLS) .. "\n\n"))
      filtered(r)
      assert.are_not.equal("\xEF\xBB\xBF", r.body:sub(1, 3))
    end)

    it("filters events ended by bare CRs, and by CRLFs", function()
      filtered(post(scripted(2, "tools/list", "text/event-stream",
                             "id: a\rdata: " .. resp(2, TOOLS) .. "\r\r")))
      filtered(post(scripted(3, "tools/list", "text/event-stream",
                             "id: a\r\ndata: " .. resp(3, TOOLS) .. "\r\n\r\n")))
    end)

    it("filters data: without a space", function()
      filtered(post(scripted(4, "tools/list", "text/event-stream",
                             "data:" .. resp(4, TOOLS) .. "\n\n")))
    end)

    it("filters a message split over several data lines, with comments between", function()
      local msg = resp(5, TOOLS)
      local cut = msg:find('{"name":"secret"', 1, true)
      local r = post(scripted(5, "tools/list", "text/event-stream",
                              "event: message\ndata: " .. msg:sub(1, cut - 1) .. "\n: a comment\n" ..
                              "data:" .. msg:sub(cut) .. "\nid: 9\n\n"))
      filtered(r)
      assert.truthy(r.body:match("^event: message\ndata: [^\n]*\n: a comment\nid: 9\n\n$"), r.body)
    end)

    it("keeps the other events, in order, with their id, event and retry lines", function()
      local r = post(scripted(6, "tools/list", "text/event-stream",
                              "retry: 100\n\n: hello\nid: n1\nevent: message\ndata: " .. NOTE ..
                              "\n\nid: n2\ndata: " .. resp(6, TOOLS) .. "\n\n"))
      filtered(r)
      assert.are.equal("retry: 100\n\n: hello\nid: n1\nevent: message\ndata: " .. NOTE .. "\n\n" ..
                       'id: n2\ndata: {"jsonrpc":"2.0","id":6,"result":{"tools":[{"name":"echo",' ..
                       '"inputSchema":{"type":"object"},"annotations":{"oauthScope":"echo:read"}}]}}' ..
                       "\n\n", r.body)
    end)
  end)

  describe("answers the strict pre-scan refuses", function()
    it("refuses a result with two tools keys (JSON and SSE)", function()
      local dup = '{"tools":[],"tools":[{"name":"secret","inputSchema":{}}]}'
      refused_json(post(scripted(10, "tools/list", "application/json", resp(10, dup))), 10)
      refused_sse(post(scripted(11, "tools/list", "text/event-stream",
                                "data: " .. resp(11, dup) .. "\n\n")), 11)
    end)

    it("refuses a response with two result keys", function()
      local body = '{"jsonrpc":"2.0","id":12,"result":{"tools":[]},"result":' .. TOOLS .. '}'
      refused_json(post(scripted(12, "tools/list", "application/json", body)), 12)
    end)

    it("refuses an SSE event whose data is not JSON", function()
      refused_sse(post(scripted(13, "tools/list", "text/event-stream",
                                "data: " .. resp(13, TOOLS) .. "x\n\n")), 13)
    end)
  end)

  describe("every list request is accounted for", function()
    it("refuses a list result under a different id", function()
      refused_json(post(scripted(20, "tools/list", "application/json", resp(21, TOOLS))), 20)
      refused_sse(post(scripted(22, "tools/list", "text/event-stream",
                                "data: " .. resp(23, TOOLS) .. "\n\n")), 22)
    end)

    it("refuses a list answered twice", function()
      refused_sse(post(scripted(24, "tools/list", "text/event-stream",
                                "data: " .. resp(24, TOOLS) .. "\n\ndata: " .. resp(24, TOOLS) ..
                                "\n\n")), 24)
    end)

    it("refuses a list response that is neither a result nor an error", function()
      refused_json(post(scripted(25, "tools/list", "application/json",
                                 '{"jsonrpc":"2.0","id":25}')), 25)
    end)

    it("refuses a list response whose last event was never ended", function()
      refused_sse(post(scripted(26, "tools/list", "text/event-stream",
                                "data: " .. NOTE .. "\n\ndata: " .. resp(26, TOOLS) .. "\n")), 26)
    end)

    it("refuses a batch answer missing one list response", function()
      local batch = "[" .. scripted(30, "tools/list", "application/json",
                                    "[" .. resp(30, TOOLS) .. "]") ..
                    ',{"jsonrpc":"2.0","id":31,"method":"prompts/list"}]'
      local r = post(batch)
      assert.are.equal(502, r.status, r.body)
      assert.falsy(r.body:find("secret", 1, true), r.body)
    end)

    it("refuses a response to an id nobody asked for", function()
      local body = "[" .. resp(32, TOOLS) .. "," .. resp(99, '{"tools":[]}') .. "]"
      refused_json(post(scripted(32, "tools/list", "application/json", body)), 32)
    end)

    it("filters or refuses a list answer whatever its HTTP status (an error status too)", function()
      local body = string.format('{"jsonrpc":"2.0","id":35,"method":"tools/list","params":{"_meta":' ..
                                 '{"raw":%s}}}', keys.json { type = "application/json", status = 500,
                                                              body = resp(35, TOOLS) })
      local r = post(body)
      assert.are.equal(500, r.status, r.body)
      assert.falsy(r.body:find("secret", 1, true), r.body)
      body = string.format('{"jsonrpc":"2.0","id":36,"method":"tools/list","params":{"_meta":' ..
                           '{"raw":%s}}}', keys.json { type = "text/html", status = 404,
                                                        body = "<p>" .. TOOLS .. "</p>" })
      r = post(body) -- the status stays (a 404 still means "session gone"), the body is ours
      assert.are.equal(404, r.status, r.body)
      assert.falsy(r.body:find("secret", 1, true), r.body)
      assert.truthy(r.body:match('^{"jsonrpc":"2.0","id":36,"error":{"code":%-32603,'), r.body)
    end)

    it("passes an error response to a list request through", function()
      local err = '{"jsonrpc":"2.0","id":33,"error":{"code":-32601,"message":"no lists here"}}'
      local r = post(scripted(33, "tools/list", "application/json", err))
      assert.are.equal(200, r.status)
      assert.are.equal(err, r.body)
    end)

    it("passes server requests that reuse the list id (another id space) through", function()
      local req = '{"jsonrpc":"2.0","id":34,"method":"sampling/createMessage","params":{}}'
      local r = post(scripted(34, "tools/list", "text/event-stream",
                              "data: " .. req .. "\n\ndata: " .. resp(34, TOOLS) .. "\n\n"))
      filtered(r)
      assert.truthy(r.body:find("data: " .. req .. "\n\n", 1, true))
    end)
  end)

  describe("resource URIs in their normal form", function()
    local function read(id, uri, token)
      return post(string.format('{"jsonrpc":"2.0","id":%d,"method":"resources/read",' ..
                                '"params":{"uri":%s}}', id, keys.json(uri)), token)
    end

    local function invalid(r, id, why)
      assert.are.equal(400, r.status, r.body)
      assert.falsy(r.body:find('"echo"', 1, true), r.body) -- never reached the upstream
      assert.truthy(r.body:match('^{"jsonrpc":"2.0","id":' .. id ..
                                 ',"error":{"code":%-32602,"message":"Invalid params: '), r.body)
      assert.truthy(r.body:find(why, 1, true), r.body)
    end

    it("refuses dot segments that climb out of the pattern's root", function()
      invalid(read(40, "journal://entries/../../admin"), 40, "climbs above the root")
      invalid(read(41, "journal://entries/%2e%2e/%2E%2E/admin"), 41, "climbs above the root")
      invalid(read(42, "journal://entries/x/../../../admin/1"), 42, "climbs above the root")
    end)

    it("refuses what has no unambiguous normal form", function()
      invalid(read(43, "journal://entries/a%2Fb"), 43, "encoded '/'")
      invalid(read(44, "journal://entries/a%00"), 44, "encoded NUL")
      invalid(read(45, "journal://entries/a%g1"), 45, "two hexadecimal digits")
      invalid(read(46, "journal://entries/a\\..\\b"), 46, "'\\\\'")
    end)

    it("refuses a URI not in normal form, naming the normal form", function()
      invalid(read(47, "journal://entries/x/../1"), 47, 'normal form is \\"journal://entries/1\\"')
      invalid(read(48, "JOURNAL://admin/1"), 48, 'normal form is \\"journal://admin/1\\"')
      invalid(read(49, "journal://entries/%7e1"), 49, 'normal form is \\"journal://entries/~1\\"')
    end)

    it("forwards a URI in normal form, decided as before", function()
      local r = read(50, "journal://entries/1")
      assert.are.equal(200, r.status, r.body)
      assert.truthy(r.body:find('"echo"', 1, true), r.body)
      assert.are.equal(403, read(51, "journal://admin/1").status)
      assert.are.equal(200, read(52, "journal://admin/1", mint("echo:admin")).status)
    end)

    it("decides listed resources on their normal form, dropping those without one", function()
      local items = {
        "journal://entries/1", "journal://entries/%2e%2e/%2e%2e/admin/1",
        "journal://entries/../admin/2", "journal://Entries/%7e3", "JOURNAL://admin/4",
        "journal://entries/a%2Fb", "journal://fn/b/../a", "journal://fn/b",
      }
      local list = {}
      for i, u in ipairs(items) do list[i] = '{"uri":' .. keys.json(u) .. ',"name":"r' .. i .. '"}' end
      local r = post(scripted(53, "resources/list", "application/json",
                              resp(53, '{"resources":[' .. table.concat(list, ",") .. "]}")))
      assert.are.equal(200, r.status, r.body)
      assert.are.equal('{"jsonrpc":"2.0","id":53,"result":{"resources":[' ..
                       '{"uri":"journal://entries/1","name":"r1"},' ..
                       '{"uri":"journal://Entries/%7e3","name":"r4"},' ..
                       '{"uri":"journal://fn/b/../a","name":"r7"}]}}', r.body)
    end)
  end)
end)
