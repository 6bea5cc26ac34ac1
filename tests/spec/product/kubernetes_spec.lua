-- kubernetes_spec.lua -- examples/kubernetes/ without a cluster: every
-- document parses and says what docs/operations.md promises (checked by
-- tests/peers/k8s_manifests.py), and the container's own arguments run the
-- real binary: the ConfigMap's policy and the Secret are laid out as the
-- kubelet mounts them (`..data` symlinks), only the addresses move to
-- loopback (the listen ports to free ones, the upstream to the echo
-- upstream) and the Secret's key to one generated here. Then the probe
-- paths and the scrape path the manifest names answer on the admin port,
-- a token gets through, and replacing the ConfigMap (the `..data` swap)
-- reloads the policy.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local RESOURCE, ISSUER = "https://mcp.example.com/mcp", "https://auth.example.com"

describe("examples/kubernetes", function()
  local dir, root, facts, up_pid, up

  setup(function()
    dir = keys.tmpdir()
    root = dir .. "/root"
    local out = io.popen(CLEAN .. "python3 tests/peers/k8s_manifests.py examples/kubernetes " ..
                         q(root) .. " 2>&1; echo rc=$?")
    facts = out:read("a")
    out:close()
    up_pid, up = procs.echo_upstream(dir)
  end)

  teardown(function()
    procs.stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  it("parse and hold the promised settings", function()
    assert.truthy(facts:match("rc=0\n$"), facts)
  end)

  it("run the real binary with the container's arguments", function()
    assert.truthy(facts:match("rc=0\n$"), facts)
    local args, mounts = {}, {}
    for line in facts:gmatch("[^\n]+") do
      local a = line:match("^arg (.+)$")
      if a then args[#args + 1] = a end
      local m = line:match("^mount (.+)$")
      if m then mounts[#mounts + 1] = m end
    end
    local ready_path, ready_port = facts:match("\nready (%S+) (%d+)")
    local live_path = facts:match("\nlive (%S+) %d+")
    local scrape_path, scrape_port = facts:match("\nscrape (%S+) (%d+)")
    assert.are.equal(ready_port, scrape_port)

    -- The Secret's key, replaced by one generated here (in the mounted
    -- file, so the path the argument names is the one read).
    local key = keys.gen(dir, "issuer", "p256")
    local jwks_path
    local run = {}
    for _, a in ipairs(args) do
      local flag, value = a:match("^(%-%-[%w-]+)=(.*)$")
      assert.truthy(flag, "arguments are --flag=value: " .. a)
      for _, m in ipairs(mounts) do
        if value:sub(1, #m + 1) == m .. "/" then value = root .. value end
      end
      if flag == "--admin-listen" then
        assert.are.equal(ready_port, value:match(":(%d+)$"), "the probes' port is the admin one")
        value = "127.0.0.1:0"
      elseif flag == "--upstream" then
        value = "http://" .. up .. "/mcp"
      elseif flag == "--jwks" then
        jwks_path = value
      end
      if flag ~= "--listen" then run[#run + 1] = flag .. "=" .. q(value) end
    end
    assert.truthy(jwks_path, "keys from the Secret (--jwks)")
    keys.write(jwks_path, keys.jwks { keys.jwk(key, "k1") })

    local log = dir .. "/gw.err"
    local pid, gw = procs.start_gateway(table.concat(run, " "), log)
    local ok, failure = pcall(function()
      local admin = procs.wait_for(log, "readyz at (127%.0%.0%.1:%d+)", 5)
      local function get(path)
        return procs.http { url = "http://" .. admin .. path, scratch = dir }
      end
      local status
      for _ = 1, 50 do
        status = get(ready_path).status
        if status == 200 then break end
        procs.sleep(0.1)
      end
      assert.are.equal(200, status, "readiness: " .. get(ready_path).body)
      assert.are.equal(200, get(live_path).status)
      local m = get(scrape_path)
      assert.are.equal(200, m.status)
      keys.write(dir .. "/scrape.txt", m.body)
      local p = io.popen(CLEAN .. "promtool check metrics <" .. q(dir .. "/scrape.txt") .. " 2>&1; echo rc=$?")
      assert.are.equal("rc=0\n", p:read("a"))
      p:close()
      local first = m.body:match('scopegate_policy_info{hash="(%x+)"}')

      local tok = assert(core.mint { alg = "ES256", key_file = key.priv_file, kid = "k1",
        claims = keys.json { sub = "s", iss = ISSUER, aud = RESOURCE, scope = "journal:read",
                             exp = os.time() + 600 } })
      local function call(name)
        return procs.http { url = "http://" .. gw .. "/mcp", scratch = dir,
          body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' .. name .. '"}}',
          headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                      "Authorization: Bearer " .. tok } }.status
      end
      assert.are.equal(200, call("list_entries"))
      assert.are.equal(403, call("create_entry"))

      -- A ConfigMap update as the kubelet applies it: a new timestamped
      -- directory, then `..data` swapped to it by one rename.
      local policy_dir
      for _, a in ipairs(run) do policy_dir = policy_dir or a:match("^%-%-policy='(.*)/[^/]+'$") end
      assert.truthy(policy_dir)
      local new = policy_dir .. "/..2026_01_01_00_00_01.000000002"
      os.execute(CLEAN .. "mkdir " .. q(new))
      local text = keys.read(policy_dir .. "/..data/policy.lua")
      keys.write(new .. "/policy.lua", (text:gsub('create_entry = "journal:write"',
                                                   'create_entry = "journal:read"')))
      os.execute(CLEAN .. "ln -s " .. q(new:match("[^/]+$")) .. " " .. q(policy_dir .. "/..data_tmp") ..
                 " && mv -T " .. q(policy_dir .. "/..data_tmp") .. " " .. q(policy_dir .. "/..data"))
      local second = procs.wait_for(log, "policy reloaded %(files changed%): policy (%x+) in force", 5)
      assert.are_not.equal(first, second)
      assert.are.equal(200, call("create_entry"))
      assert.truthy(get(scrape_path).body:find('scopegate_policy_info{hash="' .. second .. '"} 1', 1, true))
    end)
    procs.stop(pid)
    if not ok then error(failure, 0) end
  end)
end)
