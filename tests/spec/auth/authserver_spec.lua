-- authserver_spec.lua -- black-box: issuer discovery and RFC 7662 introspection answers.
--
-- The real binary against tests/peers/introspection_stub.py, a scriptable
-- authorization server, in front of tests/peers/echo_upstream.py. What the
-- interop suite (tests/interop/authserver.test.mjs, oidc-provider) cannot
-- show because a good server never does it: metadata found by RFC 8414 path
-- insertion or only by the OpenID Connect fallback, a metadata document for
-- another issuer, and introspection answers that must be refused (active as
-- a string, a refresh token, a foreign audience or issuer, expired, not yet
-- valid) or that are server errors (HTTP 500, not JSON, a repeated member,
-- the endpoint refusing our credentials), each with its documented answer
-- (docs/tokens.md "Opaque tokens"). Also the flag errors, and that neither
-- the client secret nor a token reaches the log. Runs against the ASan
-- build too: every path through the introspection threads without a leak.
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local SCOPEGATE = procs.SCOPEGATE
local AUD = "https://echo.example.com/mcp"
-- ':' '%' '+' and a space: RFC 6749 2.3.1 form-encodes both parts before Basic.
local SECRET = "s3cr:et%2B+ with spaces"

local POLICY = [[
return {
  resource = "https://echo.example.com/mcp",
  scopes = { ["echo:read"] = "Read", ["echo:write"] = "Write" },
  tools = { echo = "echo:read", write = "echo:write" },
  default = "deny",
}
]]

describe("authorization server: discovery and introspection (real binary)", function()
  local dir, stub_pid, stub, up_pid, up, pub
  local gateways = {}

  local function write_json(name, v)
    keys.write(dir .. "/stub/" .. name, keys.json(v))
  end

  local function metadata(docs)
    write_json("metadata.json", docs)
  end

  local function serve(args, name)
    local log = dir .. "/" .. name .. ".log"
    local pid, addr = procs.start_gateway(table.concat({
      "--upstream", q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"),
      "--public-url", q(AUD), args }, " "), log)
    gateways[#gateways + 1] = { pid = pid, log = log }
    return addr, log
  end

  -- scopegate serve that must not start: its exit code and stderr.
  local function refused(args)
    local out, err, code = procs.run(SCOPEGATE, table.concat({ "serve --listen 127.0.0.1:0",
      "--upstream", q("http://" .. up .. "/mcp"), "--policy", q(dir .. "/policy.lua"),
      "--public-url", q(AUD), args }, " "))
    return code, err .. out
  end

  local function call(addr, token, tool)
    return procs.http {
      url = "http://" .. addr .. "/mcp", scratch = dir, method = "POST",
      headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                  "Authorization: Bearer " .. token },
      body = keys.json { jsonrpc = "2.0", id = 1, method = "tools/call",
                         params = { name = tool or "echo", arguments = { n = 1 } } } }
  end

  local function calls()
    local n = 0
    for _ in (procs.read_file(dir .. "/stub/calls") or ""):gmatch("[^\n]+") do n = n + 1 end
    return n
  end

  setup(function()
    dir = keys.tmpdir()
    os.execute(CLEAN .. "mkdir -p " .. q(dir .. "/stub"))
    keys.write(dir .. "/policy.lua", POLICY)
    keys.write(dir .. "/secret", SECRET .. "\n")
    pub = keys.gen(dir, "unused", "rsa").pub_file -- JWTs are not what these tests send
    stub_pid = procs.spawn("exec python3 tests/peers/introspection_stub.py " .. q(dir .. "/stub"),
                           dir .. "/stub.out", dir .. "/stub.err")
    for _ = 1, 100 do
      stub = procs.read_file(dir .. "/stub/port")
      if stub then break end
      procs.sleep(0.05)
    end
    stub = "http://127.0.0.1:" .. assert(stub, "the stub did not start")
    up_pid, up = procs.echo_upstream(dir)
  end)

  teardown(function()
    for _, g in ipairs(gateways) do procs.stop(g.pid) end
    procs.stop(up_pid)
    procs.stop(stub_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  describe("discovery", function()
    it("inserts the well-known path before the issuer's path (RFC 8414 3.1)", function()
      metadata { ["/.well-known/oauth-authorization-server/tenant/a"] = {
        issuer = "ISSUER/tenant/a", introspection_endpoint = "ISSUER/introspect" } }
      keys.write(dir .. "/stub/client", "basic scopegate " .. SECRET)
      local addr, log = serve(table.concat({ "--issuer", q(stub .. "/tenant/a"),
        "--introspection-client-id scopegate --introspection-secret-file", q(dir .. "/secret") },
        " "), "rfc8414")
      assert.matches("discovered " .. stub:gsub("%p", "%%%0") ..
        "/%.well%-known/oauth%-authorization%-server/tenant/a: jwks_uri %(none%), " ..
        "introspection_endpoint " .. stub:gsub("%p", "%%%0") .. "/introspect", keys.read(log))
      local m = procs.http { url = "http://" .. addr .. "/.well-known/oauth-protected-resource/mcp",
                             scratch = dir }
      assert.matches('"authorization_servers":%["' .. stub:gsub("%p", "%%%0") .. '/tenant/a"%]', m.body)
    end)

    it("falls back to OpenID Connect discovery", function()
      metadata { ["/tenant/b/.well-known/openid-configuration"] = {
        issuer = "ISSUER/tenant/b", introspection_endpoint = "ISSUER/introspect" } }
      local _, log = serve(table.concat({ "--issuer", q(stub .. "/tenant/b"),
        "--introspection-client-id scopegate --introspection-secret-file", q(dir .. "/secret") },
        " "), "oidc")
      assert.matches("discovered [^ ]*/tenant/b/%.well%-known/openid%-configuration", keys.read(log))
    end)

    it("refuses a document for another issuer (RFC 8414 3.3), and no document at all", function()
      metadata { ["/.well-known/oauth-authorization-server/tenant/c"] = {
        issuer = "ISSUER/tenant/other", jwks_uri = "ISSUER/jwks" } }
      local code, err = refused("--issuer " .. q(stub .. "/tenant/c"))
      assert.equal(1, code)
      assert.matches("its issuer is not [^ ]*/tenant/c %(RFC 8414 3%.3%)", err)
      code, err = refused("--issuer " .. q(stub .. "/nowhere"))
      assert.equal(1, code)
      assert.matches("discovery failed: [^ ]*/%.well%-known/oauth%-authorization%-server/nowhere: " ..
                     "HTTP status 404; [^ ]*/nowhere/%.well%-known/openid%-configuration: HTTP status 404",
                     err)
    end)
  end)

  describe("introspection answers", function()
    local addr, log
    local now = os.time()

    local answers = {
      ["tok-active"] = { active = true, scope = "echo:read", aud = AUD, exp = now + 600,
                         sub = "alice", client_id = "app" },
      ["tok-aud-array"] = { active = true, scope = "echo:read echo:write",
                            aud = { "https://other.example.com", AUD }, exp = now + 600 },
      ["tok-no-exp"] = { active = true, scope = "echo:read", aud = AUD },
      ["tok-active-string"] = { active = "true", scope = "echo:read", aud = AUD },
      ["tok-refresh"] = { active = true, scope = "echo:read", aud = AUD, token_type = "refresh_token" },
      ["tok-foreign-aud"] = { active = true, scope = "echo:read", aud = "https://other.example.com" },
      ["tok-no-aud"] = { active = true, scope = "echo:read" },
      ["tok-foreign-iss"] = { active = true, scope = "echo:read", aud = AUD,
                              iss = "https://evil.example.com" },
      ["tok-expired"] = { active = true, scope = "echo:read", aud = AUD, exp = now - 3600 },
      ["tok-nbf"] = { active = true, scope = "echo:read", aud = AUD, nbf = now + 3600 },
    }

    setup(function()
      local t = {}
      for k, v in pairs(answers) do t[k] = { status = 200, body = keys.json(v) } end
      t["tok-500"] = { status = 500, body = '{"error":"server_error"}' }
      t["tok-html"] = { status = 200, body = "<html>maintenance</html>" }
      t["tok-dup"] = { status = 200, body = '{"active":false,"active":true,"aud":"' .. AUD .. '"}' }
      write_json("answers.json", t)
      keys.write(dir .. "/stub/client", "post scopegate " .. SECRET)
      addr, log = serve(table.concat({ "--issuer", q(stub .. "/tenant/a"),
        "--introspection-url", q(stub .. "/introspect"), "--public-key", q(pub),
        "--introspection-client-id scopegate --introspection-secret-file", q(dir .. "/secret"),
        "--introspection-auth post --threads 1" }, " "), "answers")
    end)

    it("passes an active answer, with its scope", function()
      assert.equal(200, call(addr, "tok-active").status)
      assert.equal(403, call(addr, "tok-active", "write").status)
      assert.equal(200, call(addr, "tok-aud-array", "write").status)
      assert.equal(200, call(addr, "tok-no-exp").status)
    end)

    it("counts its calls and its caches on /metrics, in an exposition promtool accepts", function()
      local a, alog = serve(table.concat({ "--issuer", q(stub .. "/tenant/a"),
        "--introspection-url", q(stub .. "/introspect"), "--public-key", q(pub),
        "--introspection-client-id scopegate --introspection-secret-file", q(dir .. "/secret"),
        "--introspection-auth post --threads 1 --admin-listen 127.0.0.1:0" }, " "), "metered")
      local admin = procs.wait_for(alog, "readyz at (127%.0%.0%.1:%d+)", 5)
      assert.equal(200, call(a, "tok-active").status) -- asked
      assert.equal(200, call(a, "tok-active").status) -- from the cache
      assert.equal(401, call(a, "tok-unknown").status) -- asked: inactive
      assert.equal(401, call(a, "tok-unknown").status) -- from the negative cache
      local m = procs.http { url = "http://" .. admin .. "/metrics", scratch = dir }
      assert.equal(200, m.status)
      -- Lookups, not requests: a request that waited for its call looks
      -- again when woken (a miss, then a hit); the second of each is a hit.
      for name, want in pairs { requests = 2, cache_misses = 2, cache_hits = 2, negative_hits = 2,
                                failures = 0, queue_full = 0 } do
        assert.matches("\nscopegate_introspection_" .. name .. "_total " .. want .. "\n", m.body, 1, true)
      end
      keys.write(dir .. "/scrape.txt", m.body)
      local check = io.popen(CLEAN .. "promtool check metrics <" .. q(dir .. "/scrape.txt") .. " 2>&1; echo rc=$?")
      assert.equal("rc=0\n", check:read("a"))
      check:close()
    end)

    local refusals = {
      { "tok-active-string", "The token is not active." },
      { "tok-unknown", "The token is not active." },
      { "tok-refresh", "The token type is not accepted." },
      { "tok-foreign-aud", "The token was not issued for this resource." },
      { "tok-no-aud", "The token has no audience." },
      { "tok-foreign-iss", "The token issuer is not accepted." },
      { "tok-expired", "The token has expired." },
      { "tok-nbf", "The token is not valid yet." },
    }
    for _, r in ipairs(refusals) do
      it("refuses " .. r[1] .. " with 401 invalid_token", function()
        local a = call(addr, r[1])
        assert.equal(401, a.status)
        assert.matches('error="invalid_token"', a.headers["www-authenticate"], 1, true)
        assert.matches('error_description="' .. r[2] .. '"', a.headers["www-authenticate"], 1, true)
      end)
    end

    it("answers 503 without a challenge when the server errs, and caches that briefly", function()
      for _, t in ipairs { "tok-500", "tok-html", "tok-dup" } do
        local before = calls()
        local a = call(addr, t)
        assert.equal(503, a.status)
        assert.is_nil(a.headers["www-authenticate"])
        assert.matches("could not be reached to check the token", a.body, 1, true)
        assert.equal(503, call(addr, t).status)
        assert.equal(before + 1, calls(), t .. ": a failure is remembered for a second or two")
      end
      assert.matches("warn introspection: the endpoint answered HTTP status 500 %(requests with " ..
                     "opaque tokens get 503%)", keys.read(log))
    end)

    it("sends the credentials the configured way, form-encoded", function()
      local last = (procs.read_file(dir .. "/stub/calls") or ""):match("([^\n]+)\n$")
      assert.equal("post", last:match("^(%S+)"))
    end)

    it("answers 503 when the endpoint refuses the gateway's credentials", function()
      keys.write(dir .. "/stub/client", "basic scopegate " .. SECRET)
      local a = call(addr, "tok-nbf-after-creds")
      assert.equal(503, a.status)
      keys.write(dir .. "/stub/client", "post scopegate " .. SECRET)
    end)

    it("keeps the secret and the tokens out of the log", function()
      local text = keys.read(log)
      assert.is_nil(text:find(SECRET, 1, true))
      assert.is_nil(text:find("tok-", 1, true))
    end)
  end)

  it("client_secret_basic form-encodes the id and the secret (RFC 6749 2.3.1)", function()
    keys.write(dir .. "/stub/client", "basic scope:gate " .. SECRET)
    write_json("answers.json", { ["tok-basic"] = { status = 200, body = keys.json {
      active = true, scope = "echo:read", aud = AUD } } })
    local addr = serve(table.concat({ "--public-key", q(pub),
      "--introspection-url", q(stub .. "/introspect"),
      "--introspection-client-id scope:gate --introspection-secret-file", q(dir .. "/secret") },
      " "), "basic")
    assert.equal(200, call(addr, "tok-basic").status)
  end)

  it("takes the same settings from --config", function()
    keys.write(dir .. "/stub/client", "post scopegate " .. SECRET)
    write_json("answers.json", { ["tok-config"] = { status = 200, body = keys.json {
      active = true, scope = "echo:read", aud = AUD } } })
    keys.write(dir .. "/config.lua", table.concat({ "return {",
      "  introspection_url = " .. string.format("%q", stub .. "/introspect") .. ",",
      "  introspection_client_id = 'scopegate', introspection_auth = 'post',",
      "  introspection_secret_file = " .. string.format("%q", dir .. "/secret") .. ",",
      "  introspection_cache_ttl = 30, introspection_negative_ttl = 2,",
      "  introspection_timeout_ms = 1000, introspection_concurrency = 2, introspection_queue = 16,",
      "}" }, "\n"))
    local addr, log = serve("--config " .. q(dir .. "/config.lua"), "config")
    assert.matches("introspecting opaque tokens at [^ ]*/introspect as client scopegate %(post%)",
                   keys.read(log))
    assert.equal(200, call(addr, "tok-config").status)
  end)

  it("stops cleanly: no sanitizer report, no leak (ASan build)", function()
    for _, g in ipairs(gateways) do
      assert.is_true(procs.stop(g.pid, 10))
      local text = keys.read(g.log)
      assert.falsy(text:match("ERROR: AddressSanitizer") or text:match("ERROR: LeakSanitizer") or
                   text:match("runtime error:"), text)
    end
  end)

  describe("flags", function()
    it("refuses an introspection URL without a client, an unknown auth method, a missing secret", function()
      local code, err = refused("--introspection-url " .. q(stub .. "/introspect"))
      assert.equal(2, code)
      assert.matches("--introspection-url needs --introspection-client-id", err, 1, true)
      code, err = refused("--introspection-url " .. q(stub .. "/introspect") ..
        " --introspection-client-id x --introspection-secret-file " .. q(dir .. "/secret") ..
        " --introspection-auth digest")
      assert.equal(2, code)
      assert.matches("--introspection-auth must be basic or post", err, 1, true)
      code, err = refused("--introspection-url " .. q(stub .. "/introspect") ..
        " --introspection-client-id x --introspection-secret-file " .. q(dir .. "/no-such-file"))
      assert.equal(1, code)
      assert.matches("%-%-introspection%-secret%-file [^:]*/no%-such%-file: No such file", err)
    end)
  end)
end)
