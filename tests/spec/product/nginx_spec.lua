-- nginx_spec.lua -- examples/nginx/scopegate.conf, as shipped but for its
-- port, certificate paths and upstream address, run by Debian's nginx with a
-- self-signed certificate made here, in front of the real scopegate and the
-- echo upstream: TLS terminates at nginx, challenges name the public https
-- URL, a token gets through, and server-sent events arrive as a stream.
local core = require "scopegate.core"
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local PUBLIC = "https://mcp.example.com/mcp"

local function free_port()
  return keys.run([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]):match("%d+")
end

describe("nginx in front of scopegate (examples/nginx)", function()
  local dir, key, up_pid, gw_pid, nginx_pid, port

  setup(function()
    dir = keys.tmpdir()
    key = keys.gen(dir, "rsa", "rsa")
    keys.run("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=mcp.example.com " ..
             "-addext subjectAltName=DNS:mcp.example.com -keyout " .. q(dir .. "/tls.key") ..
             " -out " .. q(dir .. "/tls.pem"))
    keys.write(dir .. "/policy.lua", 'return { resource = "' .. PUBLIC .. '", scopes = { r = "R" }, ' ..
               'tools = { echo = "r", sse = "r" } }\n')
    local up, gw
    up_pid, up = procs.echo_upstream(dir)
    gw_pid, gw = procs.start_gateway("--upstream " .. q("http://" .. up .. "/mcp") .. " --policy " ..
                                     q(dir .. "/policy.lua") .. " --public-key " .. q(key.pub_file) ..
                                     " --public-url " .. PUBLIC, dir .. "/gw.err")
    port = free_port()
    local server = keys.read("examples/nginx/scopegate.conf")
      :gsub("listen 443 ssl;", "listen 127.0.0.1:" .. port .. " ssl;")
      :gsub("/etc/ssl/certs/mcp%.example%.com%.pem", dir .. "/tls.pem")
      :gsub("/etc/ssl/private/mcp%.example%.com%.key", dir .. "/tls.key")
      :gsub("http://127%.0%.0%.1:8080", "http://" .. gw)
    keys.write(dir .. "/server.conf", server)
    keys.write(dir .. "/nginx.conf", table.concat({
      "daemon off;", "worker_processes 1;", "pid " .. dir .. "/nginx.pid;",
      "error_log " .. dir .. "/nginx.err warn;", "events { worker_connections 64; }",
      "http {", "  access_log off;", "  client_body_temp_path " .. dir .. "/body;",
      "  proxy_temp_path " .. dir .. "/proxy;", "  include " .. dir .. "/server.conf;", "}" }, "\n"))
    nginx_pid = procs.spawn("exec nginx -c " .. q(dir .. "/nginx.conf") .. " -p " .. q(dir),
                            dir .. "/nginx.out", dir .. "/nginx.stderr")
    for _ = 1, 100 do
      if os.execute(CLEAN .. "curl -s -o /dev/null --cacert " .. q(dir .. "/tls.pem") ..
                    " --resolve mcp.example.com:" .. port .. ":127.0.0.1 https://mcp.example.com:" ..
                    port .. "/healthz") == true then break end
      procs.sleep(0.05)
    end
  end)

  teardown(function()
    procs.stop(nginx_pid)
    procs.stop(gw_pid)
    procs.stop(up_pid)
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  local function call(tool, token, extra)
    local headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream" }
    if token then headers[#headers + 1] = "Authorization: Bearer " .. token end
    -- curl directly: the name must resolve to loopback and the test CA must be trusted.
    local url = "https://mcp.example.com:" .. port .. "/mcp"
    local hdr, body = dir .. "/r.h", dir .. "/r.b"
    local cmd = { "curl -s -S --http1.1 --max-time 10 --cacert", q(dir .. "/tls.pem"),
                  "--resolve", "mcp.example.com:" .. port .. ":127.0.0.1", "-D", q(hdr), "-o", q(body),
                  "-w '%{http_code}'", "--data-binary",
                  q('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' .. tool .. '"' ..
                    (extra or "") .. '}}') }
    for _, h in ipairs(headers) do cmd[#cmd + 1] = "-H " .. q(h) end
    cmd[#cmd + 1] = q(url)
    local status = tonumber(keys.run(table.concat(cmd, " ")))
    local h = {}
    for name, value in (keys.read(hdr) or ""):gmatch("([%w%-]+): ([^\r\n]*)") do h[name:lower()] = value end
    return status, h, keys.read(body)
  end

  local function token()
    return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = keys.json {
      sub = "s", aud = PUBLIC, scope = "r", exp = os.time() + 600 } })
  end

  it("answers 401 with the public https metadata URL", function()
    local status, h = call("echo", nil)
    assert.are.equal(401, status, keys.read(dir .. "/nginx.err"))
    assert.truthy(h["www-authenticate"]:find(
      'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"', 1, true),
      h["www-authenticate"])
  end)

  it("forwards an authorized call, without the token", function()
    local status, _, body = call("echo", token())
    assert.are.equal(200, status, body)
    assert.truthy(body:find('"method": "tools/call"', 1, true) or body:find('"method":"tools/call"', 1, true), body)
    assert.is_nil(body:lower():find("authorization", 1, true), body)
  end)

  it("passes a token of the largest size the gateway takes (16 KiB)", function()
    local tok = keys.largest_token(function(pad)
      return assert(core.mint { alg = "RS256", key_file = key.priv_file, claims = keys.json {
        sub = "s", aud = PUBLIC, scope = "r", exp = os.time() + 600, pad = pad } })
    end)
    local status, _, body = call("echo", tok)
    assert.are.equal(200, status, body)
  end)

  it("streams server-sent events through", function()
    local status, h, body = call("sse", token(), ',"arguments":{"pause":0.2}')
    assert.are.equal(200, status, body)
    assert.truthy((h["content-type"] or ""):find("text/event-stream", 1, true))
    assert.truthy(body:find("notifications/progress", 1, true), body)
    assert.truthy(body:find('"id": 1', 1, true) or body:find('"id":1', 1, true), body)
  end)
end)
