-- The README's run command, end to end: `./run --demo` builds, starts the
-- journal MCP server and scopegate with a local key, and must show the three
-- outcomes (allowed, 401, 403 step-up); it exits non-zero if any differs.
local K = require "keys"

-- A port nothing listens on now (bind port 0 and read what the kernel chose).
local function free_port()
  return tonumber((K.run([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]):match("%d+")))
end

describe("./run --demo", function()
  it("shows allowed, 401 and 403 step-up against the journal server", function()
    local dir = K.tmpdir()
    local cmd = ("%sSG_PORT=%d JOURNAL_PORT=%d timeout 300 ./run --demo >%s/out 2>&1"):format(
      K.CLEAN, free_port(), free_port(), dir)
    local ok = os.execute(cmd)
    local out = K.read(dir .. "/out")
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.is_true(ok == true, out)
    assert.matches("== 1. no token[^\n]*\nHTTP/1.1 401 Unauthorized\nWWW%-Authenticate: Bearer realm=\"journal\", " ..
      "scope=\"journal:entries:read\", resource_metadata=\"http://127.0.0.1:%d+/.well%-known/oauth%-protected%-resource/mcp\"", out)
    assert.matches("== 2. read token[^\n]*\nHTTP/1.1 200 OK\n", out)
    assert.matches("== 3. read token[^\n]*\nHTTP/1.1 403 Forbidden\nWWW%-Authenticate: Bearer realm=\"journal\", " ..
      "error=\"insufficient_scope\", scope=\"journal:admin journal:entries:read\"", out)
    assert.matches("Gateway design notes", out, 1, true)
  end)
end)
