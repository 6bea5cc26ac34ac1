-- tests/spec/gateway/gateway_authoring_spec.lua -- the real `scopegate serve` and the
-- policy author's expectations (issue 7, items 5 and 6): plumbing that follows
-- a public `default`, resource templates as keys (calls and the filtered
-- resources/templates/list), the Host/Origin defaults without --public-url,
-- and `--config` errors with their file:line.
--
-- Starts tests/peers/echo_upstream.py and the gateway on ephemeral loopback
-- ports, mints tokens with a key generated here, talks with the curl CLI,
-- and stops everything it started.
local core = require "scopegate.core"
local keys = require "keys"

local q, CLEAN = keys.q, keys.CLEAN
local BUILD = assert(os.getenv("SG_BUILD_DIR"), "SG_BUILD_DIR not set (use tests/busted.sh)")
local SCOPEGATE = BUILD .. "/scopegate"
local ISS = "https://auth.example.com"
local AUD = "https://cal.example.com/mcp"

local procs = require "procs"
local sleep, wait_for, spawn, stop = procs.sleep, procs.wait_for, procs.spawn, procs.stop

local dir, key, up, up_pid

-- One POST through curl; returns status, headers (lower-case names), body.
local function post(addr, body, token, extra)
  local headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream" }
  if token then headers[#headers + 1] = "Authorization: Bearer " .. token end
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  local r = procs.http { url = "http://" .. addr .. "/mcp", scratch = dir, headers = headers,
                         body = body }
  return r.status, r.headers, r.body
end

local function mint(scope)
  local claims = string.format('{"iss":%q,"aud":%q,"sub":"user-1","scope":%q,"exp":%d}',
    ISS, AUD, scope, os.time() + 600)
  return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = claims })
end

local function rpc(id, method, params)
  return string.format('{"jsonrpc":"2.0","id":%d,"method":%q%s}', id, method,
                       params and (',"params":' .. params) or "")
end

-- Starts the gateway with policy source src; returns its address and pid.
local function start_gateway(name, src, extra)
  local policy = dir .. "/" .. name .. ".lua"
  keys.write(policy, src)
  local err = dir .. "/" .. name .. ".err"
  local pid = spawn(table.concat({
    q(SCOPEGATE), "serve --listen 127.0.0.1:0 --upstream", q("http://" .. up .. "/mcp"),
    "--policy", q(policy), "--public-key", q(key.pub_file), "--issuer", q(ISS),
    "--threads 1", extra or "" }, " "), dir .. "/" .. name .. ".out", err)
  local ok, addr = pcall(wait_for, err, "listening on (127%.0%.0%.1:%d+)", 10)
  if not ok then
    stop(pid)
    error(addr)
  end
  return addr, pid
end

-- Runs f(addr) against a gateway for src, always stopping it.
local function with_gateway(name, src, extra, f)
  local addr, pid = start_gateway(name, src, extra)
  local ok, err = pcall(f, addr)
  stop(pid)
  assert(ok, err)
end

describe("scopegate serve, as a policy author expects", function()
  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    up_pid, up = procs.echo_upstream(dir)
  end)

  teardown(function()
    stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  describe("plumbing follows default", function()
    local INIT = rpc(1, "initialize", '{"protocolVersion":"2025-06-18","capabilities":{},' ..
                                      '"clientInfo":{"name":"t","version":"1"}}')

    it("lets anonymous callers initialize, ping and list under default = \"public\"", function()
      with_gateway("open", [[
return {
  resource = "https://cal.example.com/mcp",
  scopes = { ["cal:write"] = "Write" },
  tools = { write = "cal:write" },
  default = "public",
}
]], "", function(addr)
        assert.equal(200, (post(addr, INIT)))
        assert.equal(200, (post(addr, rpc(2, "ping"))))
        local code, _, body = post(addr, rpc(3, "tools/list"))
        assert.equal(200, code)
        assert.truthy(body:find('"name":"echo"', 1, true), body)  -- public by default
        assert.falsy(body:find('"name":"write"', 1, true), body)  -- needs cal:write
        assert.equal(200, (post(addr, rpc(4, "tools/call", '{"name":"echo"}'))))
        local headers
        code, headers = post(addr, rpc(5, "tools/call", '{"name":"write"}'))
        assert.equal(401, code)
        assert.matches('scope="cal:write"', headers["www-authenticate"], 1, true)
      end)
    end)

    it("still asks for a token when nothing is public", function()
      with_gateway("closed", [[
return {
  resource = "https://cal.example.com/mcp",
  scopes = { ["cal:read"] = "Read" },
  tools = { echo = "cal:read" },
}
]], "", function(addr)
        local code, headers = post(addr, INIT)
        assert.equal(401, code)
        assert.truthy(headers["www-authenticate"]:find("resource_metadata=", 1, true))
        assert.equal(200, (post(addr, INIT, mint("cal:read"))))
      end)
    end)
  end)

  describe("Host and Origin defaults", function()
    local POLICY = [[
return {
  resource = "https://cal.example.com/mcp",
  scopes = { ["cal:read"] = "Read" },
  tools = { echo = "cal:read" },
}
]]
    local CALL = rpc(1, "tools/call", '{"name":"echo"}')

    it("without --public-url, the policy's resource widens neither list", function()
      with_gateway("hosts", POLICY, "", function(addr)
        local tok = mint("cal:read")
        assert.equal(200, (post(addr, CALL, tok)))
        local port = addr:match(":(%d+)$")
        assert.equal(200, (post(addr, CALL, tok, { "Host: localhost:" .. port })))
        assert.equal(403, (post(addr, CALL, tok, { "Host: localhost:1234" }))) -- ports compared
        assert.equal(403, (post(addr, CALL, tok, { "Host: cal.example.com" })))
        assert.equal(403, (post(addr, CALL, tok, { "Origin: https://cal.example.com" })))
        assert.equal(403, (post(addr, CALL, tok, { "Origin: http://" .. addr })))
      end)
    end)

    it("with --public-url, its host and origin are accepted", function()
      with_gateway("hosts2", POLICY, "--public-url " .. q(AUD), function(addr)
        local tok = mint("cal:read")
        assert.equal(200, (post(addr, CALL, tok, { "Host: cal.example.com" })))
        assert.equal(200, (post(addr, CALL, tok, { "Origin: https://cal.example.com" })))
        assert.equal(403, (post(addr, CALL, tok, { "Host: other.example.com" })))
      end)
    end)
  end)

  describe("resource templates as keys", function()
    it("decide reads of concrete URIs and filter resources/templates/list by uriTemplate", function()
      with_gateway("templates", [[
return {
  resource = "https://cal.example.com/mcp",
  scopes = { ["docs:read"] = "Read docs", ["private:read"] = "Read private" },
  resources = {
    ["echo://docs/{id}"] = "docs:read",
    ["echo://private/{id}"] = "private:read",
  },
}
]], "", function(addr)
        local tok = mint("docs:read")
        local code, _, body = post(addr, rpc(1, "resources/templates/list"), tok)
        assert.equal(200, code)
        assert.equal('{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":' ..
          '[{"uriTemplate":"echo://docs/{id}","name":"docs"}],"nextCursor":"next-page"}}', body)
        code, _, body = post(addr, rpc(2, "resources/list"), tok)
        assert.equal(200, code)
        assert.truthy(body:find('"uri":"echo://docs/1"', 1, true), body)
        assert.falsy(body:find("echo://private/2", 1, true), body)
        code = post(addr, rpc(3, "resources/read", '{"uri":"echo://docs/7"}'), tok)
        assert.equal(200, code)
        local headers
        code, headers = post(addr, rpc(4, "resources/read", '{"uri":"echo://private/7"}'), tok)
        assert.equal(403, code)
        assert.matches('scope="docs:read private:read"', headers["www-authenticate"], 1, true)
        -- {id} is one path segment: a deeper URI falls to default (deny)
        code, headers = post(addr, rpc(5, "resources/read", '{"uri":"echo://docs/7/raw"}'), tok)
        assert.equal(403, code)
        assert.is_nil(headers["www-authenticate"])
      end)
    end)
  end)

  describe("--config errors", function()
    local function serve_config(body)
      local cfg = dir .. "/serve.lua"
      keys.write(cfg, body)
      local p = io.popen(CLEAN .. q(SCOPEGATE) .. " serve --config " .. q(cfg) .. " 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      return out, cfg
    end

    it("name file:line for every error", function()
      for body, want in pairs {
        ['return {\n  -- threads = 9\n  listen = "x",\n  threads = 0,\n}\n'] =
          ":4: --threads needs a whole number from 1 to 256, not '0'\n",
        ['return {\n  listen = "x",\n  ["lisen"] = 1,\n}\n'] =
          ":3: unknown setting 'lisen' (the flag names of scopegate serve --help, without dashes)\n",
        ['return {\n  listen = "x",\n  allowed_host = { "a", 3 },\n}\n'] =
          ":3: allowed_host[2] must be a string\n",
        ['return {\n\n  listen = 1.5 }\n'] = ":3: listen must be a string, an integer or a list, not number\n",
        ['local t = {}\n\nreturn 5\n'] = ":3: must return a table of settings\n",
        ['return {\n  max_body = "lots",\n}\n'] = ":2: --max-body needs a whole number",
      } do
        local out, cfg = serve_config(body)
        assert.matches("scopegate serve: " .. cfg .. want, out, 1, true)
        assert.matches("rc=2", out, 1, true)
      end
    end)
  end)
end)
