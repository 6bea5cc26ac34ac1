-- metrics_spec.lua -- the admin listener (--admin-listen) through the real
-- binary: /metrics passes `promtool check metrics` and counts exactly the
-- requests this spec sends (decisions by method, tool and outcome, token
-- refusals by reason, reloads, histogram counts, gauges), /readyz follows
-- the upstream within --ready-upstream-window, /healthz, and the listener
-- refuses to share the MCP address. Keys are generated here; the JWKS is
-- served over HTTP so its fetches are counted too.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local SCOPEGATE = procs.SCOPEGATE
local AUD = "https://metrics.example.com/mcp"
local WEIRD = 'we"ird\\tool' -- a tool name that needs escaping as a label value

-- A policy: echo, sse and the weird tool need r, write needs w, anything
-- else is denied. `extra` changes the text (and so the hash).
local function policy_text(extra)
  return 'return { resource = "' .. AUD .. '", scopes = { r = "R", w = "W" },\n' ..
         '  tools = { echo = "r", sse = "r", write = "w", ["we\\"ird\\\\tool"] = "r" },\n' ..
         '  default = "deny" }\n' .. (extra or "")
end

-- Every sample of an exposition: samples['name{labels}'] = number.
local function samples(text)
  local s = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^#") then
      local key, value = line:match("^(.-) (%S+)$")
      if key then s[key] = tonumber(value) end
    end
  end
  return s
end

local function promtool_check(dir, text)
  keys.write(dir .. "/scrape.txt", text)
  local p = io.popen(CLEAN .. "promtool check metrics <" .. q(dir .. "/scrape.txt") .. " 2>&1; echo rc=$?")
  local out = p:read("a")
  p:close()
  return out
end

describe("the admin listener", function()
  local dir, signer, stranger, srv, up_pid, up

  setup(function()
    dir = keys.tmpdir()
    signer = keys.gen(dir, "signer", "rsa")
    stranger = keys.gen(dir, "stranger", "rsa2")
    keys.write(dir .. "/jwks.json", keys.jwks { keys.jwk(signer, "k1") })
    srv = keys.jwks_server(dir, dir .. "/jwks.json")
    up_pid, up = procs.echo_upstream(dir)
  end)

  teardown(function()
    procs.stop(up_pid)
    if srv then srv.stop() end
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  local started = 0
  -- Starts a gateway with the policy in `policy_file`, its admin listener
  -- on a free port; returns pid, MCP address, admin address, log.
  local function start(policy_file, extra, upstream)
    started = started + 1
    local log = dir .. "/gw" .. started .. ".err"
    local pid, gw = procs.start_gateway("--upstream " .. q("http://" .. (upstream or up) .. "/mcp") ..
                                        " --policy " .. q(policy_file) .. " --jwks " .. q(srv.url) ..
                                        " --admin-listen 127.0.0.1:0 " .. (extra or ""), log)
    local admin = procs.wait_for(log, "readyz at (127%.0%.0%.1:%d+)", 5)
    return pid, gw, admin, log
  end

  local function token(claims, key)
    local c = { sub = "s", aud = AUD, scope = "r", exp = os.time() + 600 }
    for k, v in pairs(claims or {}) do c[k] = v end
    return assert(core.mint { alg = "RS256", key_file = (key or signer).priv_file, kid = "k1",
                              claims = keys.json(c) })
  end

  local function call(gw, tool, tok, args)
    local body = keys.json { jsonrpc = "2.0", id = 1, method = "tools/call",
                             params = { name = tool, arguments = args or {} } }
    local h = { "Content-Type: application/json", "Accept: application/json, text/event-stream" }
    if tok then h[#h + 1] = "Authorization: Bearer " .. tok end
    return procs.http { url = "http://" .. gw .. "/mcp", scratch = dir, body = body, headers = h }.status
  end

  local function get(admin, path, method)
    return procs.http { url = "http://" .. admin .. path, scratch = dir, method = method }
  end

  local function scrape(admin)
    local r = get(admin, "/metrics")
    assert.are.equal(200, r.status)
    assert.are.equal("text/plain; version=0.0.4; charset=utf-8", r.headers["content-type"])
    return r.body, samples(r.body)
  end

  it("counts exactly what was sent, in an exposition promtool accepts", function()
    keys.write(dir .. "/count.lua", policy_text())
    local pid, gw, admin = start(dir .. "/count.lua", "--threads 2")
    local ok, failure = pcall(function()
      local r_only = token()
      local sent = 0
      local function expect(status, ...)
        sent = sent + 1
        assert.are.equal(status, call(gw, ...))
      end
      for _ = 1, 3 do expect(200, "echo", r_only) end
      expect(200, WEIRD, r_only)
      expect(403, "write", r_only)
      expect(403, "write", r_only)
      expect(403, "nope", r_only) -- not in the policy: denied, counted as "other"
      expect(403, "client-minted-" .. os.time(), r_only)
      expect(401, "echo", nil)
      expect(401, "echo", token { exp = os.time() - 3600 })
      expect(401, "echo", token(nil, stranger))
      expect(401, "echo", token { aud = "https://elsewhere.example.com/mcp" })
      expect(401, "echo", token { aud = "https://elsewhere.example.com/mcp" })

      local text, s = scrape(admin)
      assert.are.equal("rc=0\n", promtool_check(dir, text))
      local function d(tool, outcome)
        return s['scopegate_decisions_total{method="tools/call",tool="' .. tool .. '",outcome="' ..
                 outcome .. '"}']
      end
      assert.are.equal(3, d("echo", "allowed"))
      assert.are.equal(1, d('we\\"ird\\\\tool', "allowed"), text)
      assert.are.equal(2, d("write", "forbidden"))
      assert.are.equal(2, d("other", "denied"), "unknown tools share one series")
      assert.are.equal(5, d("echo", "unauthorized"))
      assert.is_nil(text:find("client-minted", 1, true), "no label value a client chose")
      assert.are.equal(1, s['scopegate_token_refusals_total{reason="expired"}'])
      assert.are.equal(1, s['scopegate_token_refusals_total{reason="bad_signature"}'])
      assert.are.equal(2, s['scopegate_token_refusals_total{reason="wrong_audience"}'])
      assert.are.equal(0, s['scopegate_token_refusals_total{reason="unknown_kid"}'])
      assert.are.equal(1, s["scopegate_jwks_fetches_total"], "the start-up fetch")
      assert.are.equal(0, s["scopegate_jwks_fetch_failures_total"])
      -- Every request on the MCP listener is one observation; every
      -- forwarded one is one upstream observation.
      assert.are.equal(sent, s["scopegate_http_request_duration_seconds_count"])
      assert.are.equal(sent, s['scopegate_http_request_duration_seconds_bucket{le="+Inf"}'])
      assert.are.equal(4, s["scopegate_upstream_response_seconds_count"])
      assert.are.equal(0, s["scopegate_sse_streams"])
      assert.are.equal(1, s["scopegate_keys"])
      assert.are.equal(1, s["scopegate_ready"])
      assert.truthy(text:find('scopegate_build_info{version="', 1, true))
    end)
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end)

  it("counts reloads by result and names the policy in force by its hash", function()
    keys.write(dir .. "/reload.lua", policy_text())
    local pid, gw, admin, log = start(dir .. "/reload.lua")
    local ok, failure = pcall(function()
      local first = procs.read_file(log):match("policy %S+ (%x+), reload")
      local _, s = scrape(admin)
      assert.are.equal(1, s['scopegate_policy_info{hash="' .. first .. '"}'])
      assert.are.equal(0, s['scopegate_policy_reloads_total{result="ok"}'])

      keys.write(dir .. "/reload.lua", policy_text("-- edited\n"))
      local second = procs.wait_for(log, "policy reloaded %(files changed%): policy (%x+) in force", 5)
      assert.are_not.equal(first, second)
      _, s = scrape(admin)
      assert.are.equal(1, s['scopegate_policy_reloads_total{result="ok"}'])
      assert.are.equal(1, s['scopegate_policy_info{hash="' .. second .. '"}'])
      assert.is_nil(s['scopegate_policy_info{hash="' .. first .. '"}'])

      keys.write(dir .. "/reload.lua", "return {\n")
      procs.wait_for(log, "(policy reload refused)", 5)
      _, s = scrape(admin)
      assert.are.equal(1, s['scopegate_policy_reloads_total{result="refused"}'])
      assert.are.equal(1, s['scopegate_policy_reloads_total{result="ok"}'])
      assert.are.equal(1, s['scopegate_policy_info{hash="' .. second .. '"}'], "the old one stays")
      assert.are.equal(200, call(gw, "echo", token()))
    end)
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end)

  it("gauges open connections and event streams, and back down", function()
    keys.write(dir .. "/gauge.lua", policy_text())
    local pid, gw, admin = start(dir .. "/gauge.lua")
    local ok, failure = pcall(function()
      local body = keys.json { jsonrpc = "2.0", id = 7, method = "tools/call",
                               params = { name = "sse", arguments = { pause = 2 } } }
      keys.write(dir .. "/sse.req", body)
      os.execute(CLEAN .. "curl -s -N --http1.1 -o " .. q(dir .. "/sse.out") ..
                 " -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'" ..
                 " -H " .. q("Authorization: Bearer " .. token()) .. " --data-binary @" ..
                 q(dir .. "/sse.req") .. " " .. q("http://" .. gw .. "/mcp") .. " & echo $! >" ..
                 q(dir .. "/sse.pid"))
      procs.wait_for(dir .. "/sse.out", "(ev%-1)", 5)
      local _, s = scrape(admin)
      assert.are.equal(1, s["scopegate_sse_streams"])
      assert.are.equal(1, s["scopegate_client_connections"])
      procs.wait_for(dir .. "/sse.out", "(ev%-2)", 5)
      for _ = 1, 40 do
        _, s = scrape(admin)
        if s["scopegate_client_connections"] == 0 then break end
        procs.sleep(0.05)
      end
      assert.are.equal(0, s["scopegate_sse_streams"])
      assert.are.equal(0, s["scopegate_client_connections"])
    end)
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end)

  it("is ready only while the upstream answered within the window", function()
    keys.write(dir .. "/ready.lua", policy_text())
    -- A port with nothing behind it yet: an echo upstream's, stopped (its
    -- log in a directory of its own: dir/up.out names the running one).
    local spare = dir .. "/spare"
    os.execute(CLEAN .. "mkdir -p " .. q(spare))
    local probe_pid, addr = procs.echo_upstream(spare)
    procs.stop(probe_pid)
    assert.are_not.equal(up, addr)
    local port = addr:match(":(%d+)$")
    local pid, gw, admin = start(dir .. "/ready.lua", "--ready-upstream-window 2", addr)
    local later_pid
    local ok, failure = pcall(function()
      assert.are.equal(200, get(admin, "/healthz").status)
      local r = get(admin, "/readyz")
      assert.are.equal(503, r.status, r.body)
      assert.are.equal("the upstream has not answered yet\n", r.body)
      assert.are.equal(502, call(gw, "echo", token()))

      later_pid = procs.spawn("exec python3 tests/peers/echo_upstream.py --port " .. port,
                              dir .. "/later.out", dir .. "/later.err")
      procs.wait_for(dir .. "/later.out", "(listening)", 10)
      local status
      for _ = 1, 60 do -- the probe runs every window / 3
        status = get(admin, "/readyz").status
        if status == 200 then break end
        procs.sleep(0.1)
      end
      assert.are.equal(200, status)
      assert.are.equal(1, samples(get(admin, "/metrics").body)["scopegate_ready"])

      procs.stop(later_pid)
      later_pid = nil
      for _ = 1, 60 do
        r = get(admin, "/readyz")
        if r.status == 503 then break end
        procs.sleep(0.1)
      end
      assert.are.equal(503, r.status)
      assert.truthy(r.body:match("^the upstream has not answered for %d+ s %(window 2 s%)\n$"), r.body)
      assert.are.equal(200, get(admin, "/healthz").status, "alive all along")
      local s = samples(get(admin, "/metrics").body)
      assert.are.equal(0, s["scopegate_ready"])
      assert.is_true(s["scopegate_upstream_probe_failures_total"] >= 1)

      assert.are.equal(404, get(admin, "/mcp").status)
      assert.are.equal(404, get(admin, "/").status)
      local m = get(admin, "/metrics", "POST")
      assert.are.equal(405, m.status)
      assert.are.equal("GET, HEAD", m.headers["allow"])
    end)
    if later_pid then procs.stop(later_pid) end
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end)

  it("refuses an admin address that is the MCP address", function()
    keys.write(dir .. "/flags.lua", policy_text())
    local base = "serve --upstream http://127.0.0.1:9/mcp --policy " .. q(dir .. "/flags.lua") ..
                 " --public-key " .. q(signer.pub_file)
    for _, pair in ipairs { { "127.0.0.1:18931", "127.0.0.1:18931" },
                            { "127.0.0.1:18931", "0.0.0.0:18931" },
                            { "0.0.0.0:18931", "localhost:18931" } } do
      local _, err, code = procs.run(SCOPEGATE, base .. " --listen " .. pair[1] .. " --admin-listen " ..
                                     pair[2])
      assert.are.equal(2, code, err)
      assert.truthy(err:find("is the --listen address", 1, true), err)
    end
    local _, err, code = procs.run(SCOPEGATE, base .. " --listen 127.0.0.1:0 --ready-upstream-window 5")
    assert.are.equal(2, code)
    assert.truthy(err:find("--ready-upstream-window needs --admin-listen", 1, true), err)
    _, err, code = procs.run(SCOPEGATE, base .. " --listen 127.0.0.1:0 --admin-listen nowhere")
    assert.are.equal(2, code)
    assert.truthy(err:find("--admin-listen needs HOST:PORT", 1, true), err)
    -- The same refusal from --config (admin_listen is a key like any flag).
    keys.write(dir .. "/conf.lua", 'return { listen = "127.0.0.1:18932",\n  admin_listen = "127.0.0.1:18932" }\n')
    _, err, code = procs.run(SCOPEGATE, base .. " --config " .. q(dir .. "/conf.lua"))
    assert.are.equal(2, code, err)
    assert.truthy(err:find("is the --listen address", 1, true), err)
  end)
end)
