-- verifier_flags_spec.lua -- every token-verification setting is reachable
-- from the command line and from --config, and does what docs/tokens.md
-- ("Verifier settings") says, through the real binary.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local SCOPEGATE = procs.SCOPEGATE
local AUD = "https://verifier.example.com/mcp"

describe("verifier settings", function()
  local dir, rsa, ec, up_pid, up

  setup(function()
    dir = keys.tmpdir()
    rsa = keys.gen(dir, "rsa", "rsa")
    ec = keys.gen(dir, "p256", "p256")
    keys.write(dir .. "/jwks.json", keys.jwks { keys.jwk(rsa, "r1"), keys.jwk(ec, "e1") })
    keys.write(dir .. "/policy.lua", 'return { resource = "' .. AUD .. '", scopes = { r = "R" }, ' ..
               'tools = { echo = "r" } }\n')
    up_pid, up = procs.echo_upstream(dir)
  end)

  teardown(function()
    procs.stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  -- Runs a gateway with extra flags, calls f(gw_address), stops it (each
  -- with a log file of its own, as procs.start_gateway asks).
  local started = 0
  local function with_gateway(extra, f)
    started = started + 1
    local pid, gw = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") .. " --policy " ..
                                        q(dir .. "/policy.lua") .. " --jwks " ..
                                        q(dir .. "/jwks.json") .. " " .. extra,
                                        dir .. "/gw" .. started .. ".err")
    local ok, failure = pcall(f, gw)
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end

  local function token(key, alg, kid, claims)
    local c = { sub = "s", aud = AUD, scope = "r", exp = os.time() + 600 }
    for k, v in pairs(claims or {}) do c[k] = v end
    return assert(core.mint { alg = alg, key_file = key.priv_file, kid = kid, claims = keys.json(c) })
  end

  local function call(gw, tok)
    local r = procs.http { url = "http://" .. gw .. "/mcp", scratch = dir,
      body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}',
      headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                  "Authorization: Bearer " .. tok } }
    return r.status, r.headers["www-authenticate"] or ""
  end

  it("--token-algs accepts only the algorithms named", function()
    local rs, es = token(rsa, "RS256", "r1"), token(ec, "ES256", "e1")
    with_gateway("", function(gw)
      assert.are.equal(200, (call(gw, rs)))
      assert.are.equal(200, (call(gw, es)))
    end)
    with_gateway("--token-algs ES256", function(gw)
      local status, www = call(gw, rs)
      assert.are.equal(401, status)
      assert.truthy(www:find("The token algorithm is not allowed", 1, true), www)
      assert.are.equal(200, (call(gw, es)))
    end)
  end)

  it("--require-claim refuses tokens without the claim", function()
    with_gateway("--require-claim jti --require-claim client_id", function(gw)
      local status, www = call(gw, token(rsa, "RS256", "r1", { jti = "j1" }))
      assert.are.equal(401, status)
      assert.truthy(www:find("lacks a claim this server requires", 1, true), www)
      assert.are.equal(200, (call(gw, token(rsa, "RS256", "r1", { jti = "j1", client_id = "c" }))))
    end)
  end)

  it("--leeway decides how long an expired token is still accepted", function()
    local late = token(rsa, "RS256", "r1", { exp = os.time() - 30 })
    with_gateway("", function(gw) assert.are.equal(200, (call(gw, late))) end) -- 60 s default
    with_gateway("--leeway 5", function(gw) assert.are.equal(401, (call(gw, late))) end)
  end)

  it("--max-token-bytes refuses larger tokens", function()
    local big = token(rsa, "RS256", "r1", { pad = string.rep("x", 600) })
    with_gateway("--max-token-bytes 800", function(gw)
      local status, www = call(gw, big)
      assert.are.equal(401, status)
      assert.truthy(www:find("too large", 1, true), www)
      assert.are.equal(200, (call(gw, token(rsa, "RS256", "r1"))))
    end)
  end)

  it("takes the same settings from --config", function()
    keys.write(dir .. "/config.lua", 'return { token_algs = "ES256", require_claim = { "jti" }, ' ..
               'leeway = 5, max_token_bytes = 4096 }\n')
    with_gateway("--config " .. q(dir .. "/config.lua"), function(gw)
      assert.are.equal(401, (call(gw, token(rsa, "RS256", "r1", { jti = "j" }))))
      assert.are.equal(401, (call(gw, token(ec, "ES256", "e1"))))
      assert.are.equal(200, (call(gw, token(ec, "ES256", "e1", { jti = "j" }))))
      assert.are.equal(401, (call(gw, token(ec, "ES256", "e1", { jti = "j", exp = os.time() - 30 }))))
    end)
  end)

  it("refuses bad values with a clear error (exit 2)", function()
    local base = "serve --listen 127.0.0.1:0 --upstream http://127.0.0.1:1/mcp --policy " ..
                 q(dir .. "/policy.lua") .. " --jwks " .. q(dir .. "/jwks.json")
    local _, err, code = procs.run(SCOPEGATE, base .. " --token-algs RS256,none")
    assert.are.equal(2, code)
    assert.truthy(err:find("--token-algs: 'none' is not a JWS signature algorithm", 1, true), err)
    _, err, code = procs.run(SCOPEGATE, base .. " --leeway 7200")
    assert.are.equal(2, code)
    assert.truthy(err:find("--leeway needs a whole number from 0 to 3600", 1, true), err)
  end)
end)
