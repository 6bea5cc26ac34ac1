-- presets_gateway_spec.lua -- every shipped example policy's own `scopegate
-- test` cases, sent through the real gateway in front of the real journal
-- MCP server (examples/journal/server.mjs), must come out as the test file
-- says: the policy tests and the gateway cannot disagree.
--
-- Each case becomes an HTTP request with a token minted here (or none), and
-- its expectation is read from the wire: allow = the upstream answered (200),
-- 401, 403 with a step-up (`scope=` in the challenge, compared with the
-- case's `challenge`), deny = 403 without one; `visible` sends tools/list and
-- compares the names the gateway lets through. For `by_annotations` the
-- gateway learns the journal's real tool annotations itself (the catalogue):
-- cases that set `annotations` by hand exist only for `scopegate test` and
-- are skipped here.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local AUD = "https://journal.example.com/mcp"
local NODE = "tests/peers/node_modules/node/bin/node"
local EXAMPLES = { "catch_all", "read_write", "per_resource", "by_annotations", "journal" }

local function node()
  local f = io.open(NODE, "rb")
  if f then
    f:close()
    return NODE
  end
  return "node"
end

-- The test file's table, read as plain Lua data (no policy code runs here).
local function load_cases(path)
  local chunk = assert(loadfile(path, "t", {}))
  return chunk()
end

local json = keys.json

-- The JSON-RPC message a case stands for (what `scopegate test` decides).
local function message(case, id)
  local function rpc(method, params)
    return json { jsonrpc = "2.0", id = id, method = method, params = params or {} }
  end
  if case.tool then
    return rpc("tools/call", { name = case.tool, arguments = case.arguments or {} })
  elseif case.prompt then
    return rpc("prompts/get", { name = case.prompt, arguments = case.arguments })
  elseif case.resource then
    return rpc("resources/read", { uri = case.resource })
  elseif case.method then
    return rpc(case.method, case.params)
  elseif case.visible then
    return rpc("tools/list", nil)
  end
  return nil
end

-- The scopes of the challenge's `scope="..."`, sorted; nil when none.
local function challenge_scopes(www)
  local s = www and www:match('scope="([^"]*)"')
  if not s then return nil end
  local list = {}
  for w in s:gmatch("%S+") do list[#list + 1] = w end
  table.sort(list)
  return list
end

-- Tool names in a tools/list answer (JSON or an event stream).
local function tool_names(body)
  local names = {}
  for name in body:gmatch('"name"%s*:%s*"([^"]+)"%s*,%s*"') do names[#names + 1] = name end
  return names
end

describe("example policies through the gateway", function()
  local dir, key, journal_pid, upstream

  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    journal_pid = procs.spawn("exec " .. node() .. " examples/journal/server.mjs --port 0",
                              dir .. "/journal.out", dir .. "/journal.err")
    upstream = procs.wait_for(dir .. "/journal.out", '"url":"(http://[^"]+)"', 20)
  end)

  teardown(function()
    procs.stop(journal_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  local function mint(case)
    if case.token == false or (not case.scopes and not case.claims) then return nil end
    local claims = { sub = "preset-spec", aud = AUD, exp = os.time() + 600 }
    for k, v in pairs(case.claims or {}) do claims[k] = v end
    if case.scopes then claims.scope = table.concat(case.scopes, " ") end
    return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = json(claims) })
  end

  for _, name in ipairs(EXAMPLES) do
    it(name .. ": every case of " .. name .. ".test.lua holds on the wire", function()
      local spec = load_cases("policies/examples/" .. name .. ".test.lua")
      local err = dir .. "/" .. name .. ".err"
      local pid, gw = procs.start_gateway("--upstream " .. q(upstream) .. " --policy " ..
                                          q("policies/examples/" .. name .. ".lua") ..
                                          " --public-key " .. q(key.pub_file) ..
                                          " --key-alg RS256 --audience " .. q(AUD), err)
      local ok, failure = pcall(function()
        if name == "by_annotations" then
          procs.wait_for(err, "tool catalogue: (%d+) tools", 10)
        end
        local checked = 0
        for i, case in ipairs(spec.cases) do
          local body = message(case, i)
          if body and case.annotations == nil then
            local headers = { "Content-Type: application/json",
                              "Accept: application/json, text/event-stream",
                              "MCP-Protocol-Version: " .. (case.protocol_version or "2025-06-18") }
            local token = mint(case)
            if token then headers[#headers + 1] = "Authorization: Bearer " .. token end
            for h, v in pairs(case.headers or {}) do headers[#headers + 1] = h .. ": " .. v end
            local r = procs.http { url = "http://" .. gw .. "/mcp", scratch = dir, headers = headers,
                                   body = body }
            local what = string.format("%s case %d %q: %d %s %s", name, i, case[1], r.status,
                                       r.headers["www-authenticate"] or "", r.body:sub(1, 300))
            if case.visible then
              assert.are.equal(200, r.status, what)
              local got = tool_names(r.body)
              table.sort(got)
              local want = { table.unpack(case.visible) }
              table.sort(want)
              assert.are.same(want, got, what)
            elseif case.expect == "allow" then
              assert.are.equal(200, r.status, what)
            elseif case.expect == "401" then
              assert.are.equal(401, r.status, what)
            elseif case.expect == "403" then
              assert.are.equal(403, r.status, what)
              local scopes = challenge_scopes(r.headers["www-authenticate"])
              assert.is_not_nil(scopes, what)
              if case.challenge then
                local want = { table.unpack(case.challenge) }
                table.sort(want)
                assert.are.same(want, scopes, what)
              end
            elseif case.expect == "deny" then
              assert.are.equal(403, r.status, what)
              assert.is_nil(challenge_scopes(r.headers["www-authenticate"]), what)
            end
            checked = checked + 1
          end
        end
        assert.is_true(checked >= 3, name .. ": too few cases checked on the wire")
      end)
      procs.stop(pid)
      if not ok then error(failure, 0) end
    end)
  end
end)

describe("by_annotations and the tool catalogue", function()
  local dir, key, up_pid, up, gw_pid, gw, gw_err

  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    keys.write(dir .. "/policy.lua", [[
local presets = require "presets"
local p = presets.by_annotations { prefix = "echo", resource = "https://echo.example.com/mcp" }
p.tools.add_tool = "echo:tools:write"
return p
]])
    up_pid, up = procs.echo_upstream(dir)
    gw_err = dir .. "/gw.err"
    gw_pid, gw = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") .. " --policy " ..
                                     q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file),
                                     gw_err)
  end)

  teardown(function()
    procs.stop(gw_pid)
    procs.stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  local function call(tool, scope, args)
    local claims = json { sub = "c", aud = "https://echo.example.com/mcp", exp = os.time() + 600,
                          scope = scope }
    local token = assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = claims })
    return procs.http { url = "http://" .. gw .. "/mcp", scratch = dir, body = json {
      jsonrpc = "2.0", id = 7, method = "tools/call", params = { name = tool, arguments = args or {} } },
      headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                  "Authorization: Bearer " .. token } }
  end

  it("classifies from the upstream's own tools/list, fetched at start (every page)", function()
    procs.wait_for(gw_err, "tool catalogue: (%d+) tools", 10)
    assert.are.equal(200, call("echo", "echo:tools:read").status)   -- readOnlyHint
    local r = call("write", "echo:tools:write")                     -- no hints: the MCP
    assert.are.equal(403, r.status)                                 -- defaults, destructive
    assert.are.same({ "echo:admin", "echo:tools:write" }, challenge_scopes(r.headers["www-authenticate"]))
    r = call("fresh", "echo:admin")                                 -- unknown: denied
    assert.are.equal(403, r.status)
    assert.is_nil(challenge_scopes(r.headers["www-authenticate"]))
  end)

  -- The notification may reach the gateway in a streamed answer (relayed
  -- piece by piece) or in one that arrived whole: both must be seen.
  for _, way in ipairs { { "streamed", "fresh", 0.3 }, { "whole", "fresh_too", 0 } } do
    local how, tool, pause = way[1], way[2], way[3]
    it("learns a tool announced with notifications/tools/list_changed (" .. how .. ")", function()
      local function log() return "\n--- gateway log:\n" .. (procs.read_file(gw_err) or "") end
      local r = call("add_tool", "echo:tools:write",
                     { name = tool, annotations = { destructiveHint = true }, pause = pause })
      assert.are.equal(200, r.status, r.body .. log())
      assert.truthy(r.body:find("notifications/tools/list_changed", 1, true), r.body)
      -- The refetch runs on the catalogue's thread: poll until it is in (10 s at most).
      local w
      local deadline = os.time() + 10
      repeat
        w = call(tool, "echo:tools:write")
        if w.status == 403 and challenge_scopes(w.headers["www-authenticate"]) then break end
        procs.sleep(0.05)
      until os.time() > deadline
      assert.are.equal(403, w.status, w.body .. log())
      assert.are.same({ "echo:admin", "echo:tools:write" },
                      challenge_scopes(w.headers["www-authenticate"]), log())
      assert.are.equal(200, call(tool, "echo:admin").status, log())
    end)
  end
end)
