-- reload_spec.lua -- what SIGHUP does to a --jwks URL, through the real
-- binary: the key set is fetched again at once (not at the next TTL), and
-- tokens verified before are verified again with the keys now in force.
-- (Reload under load, file watching and --public-key rotation are in
-- tests/interop/reload.test.mjs.)
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local AUD = "https://reload.example.com/mcp"

describe("SIGHUP with a --jwks URL", function()
  local dir, srv, up_pid, up, gw_pid, gw, gw_err, old, new

  setup(function()
    dir = keys.tmpdir()
    old = keys.gen(dir, "old", "rsa")
    new = keys.gen(dir, "new", "rsa2")
    -- Both keys use the same kid: only a refetch can tell the gateway that
    -- the key behind "k1" changed (an unknown kid would refetch anyway).
    keys.write(dir .. "/jwks.json", keys.jwks { keys.jwk(old, "k1") })
    srv = keys.jwks_server(dir, dir .. "/jwks.json")
    keys.write(dir .. "/policy.lua", 'return { resource = "' .. AUD .. '", scopes = { r = "R" }, ' ..
               'tools = { echo = "r" } }\n')
    up_pid, up = procs.echo_upstream(dir)
    gw_err = dir .. "/gw.err"
    gw_pid, gw = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") .. " --policy " ..
                                     q(dir .. "/policy.lua") .. " --jwks " .. q(srv.url) ..
                                     " --jwks-ttl 3600 --jwks-refetch 3600", gw_err)
  end)

  teardown(function()
    procs.stop(gw_pid)
    procs.stop(up_pid)
    if srv then srv.stop() end
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  local function call(key)
    local token = assert(core.mint { alg = "RS256", key_file = key.priv_file, kid = "k1",
      claims = keys.json { sub = "s", aud = AUD, scope = "r", exp = os.time() + 600 } })
    return procs.http { url = "http://" .. gw .. "/mcp", scratch = dir,
      body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}',
      headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                  "Authorization: Bearer " .. token } }.status
  end

  it("fetches the key set again at once and forgets tokens verified with the old one", function()
    assert.are.equal(200, call(old))
    assert.are.equal(401, call(new))
    local hits = srv.hits()
    keys.write(dir .. "/jwks.json", keys.jwks { keys.jwk(new, "k1") })
    procs.sleep(0.3)
    assert.are.equal(200, call(old), "before SIGHUP the old key stays (TTL and refetch: 1 h)")
    os.execute(CLEAN .. "kill -HUP " .. gw_pid)
    procs.wait_for(gw_err, "(SIGHUP: keys reloaded)", 5)
    assert.are.equal(hits + 1, srv.hits(), "one fetch")
    assert.are.equal(200, call(new))
    assert.are.equal(401, call(old), "a token cached before the rotation is verified again")
  end)
end)
