-- The scopegate command line, run as a real process: check, explain, token
-- and version, including their bad-input errors and exit codes.
local K = require "keys"
local core = require "scopegate.core"

local BIN = os.getenv("SG_BUILD_DIR") .. "/scopegate"

-- Runs the binary; returns stdout, stderr and the exit code.
local procs = require "procs"
local function sg(args, stdin) return procs.run(BIN, args, stdin) end

local JOURNAL = "policies/examples/journal.lua"
local RM = "https://journal.example.com/.well-known/oauth-protected-resource/mcp"

describe("scopegate version and usage", function()
  it("prints the version", function()
    local out, _, code = sg("version")
    assert.equal(0, code)
    assert.equal("scopegate " .. core.version .. "\n", out)
  end)

  it("refuses an unknown command with usage and exit 2", function()
    local _, err, code = sg("frobnicate")
    assert.equal(2, code)
    assert.matches("unknown command 'frobnicate'", err, 1, true)
  end)
end)

describe("scopegate check", function()
  it("accepts the shipped examples", function()
    for _, p in ipairs { JOURNAL, "policies/examples/minimal.lua" } do
      local out, _, code = sg("check " .. p)
      assert.equal(0, code, out)
      assert.equal(p .. ": ok\n", out)
    end
  end)

  it("names file, line and key of each error and exits 1", function()
    local dir = K.tmpdir()
    local path = dir .. "/bad.lua"
    K.write(path, 'return {\n  scopes = { ["a:read"] = "r" },\n  tools = {\n    x = { al_of = { "a:read" } },\n  },\n}\n')
    local out, _, code = sg("check " .. path)
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.equal(1, code)
    assert.matches(path .. ":4: error: tools.x: unknown key \"al_of\"", out, 1, true)
  end)

  it("needs exactly one policy", function()
    local _, err, code = sg("check")
    assert.equal(2, code)
    assert.matches("usage: scopegate check POLICY", err, 1, true)
  end)
end)

describe("scopegate explain", function()
  local call = '\'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_entry","arguments":{"permanent":true}}}\''

  it("shows the rule, the requirement and the exact step-up challenge", function()
    local out, _, code = sg("explain " .. JOURNAL .. " --claims '{\"sub\":\"u\",\"scope\":\"journal:entries:read\"}' --message " .. call)
    assert.equal(4, code)
    -- The policy's content hash, as serve logs it: SHA-256 over the file's bytes.
    local digest = K.run("openssl dgst -sha256 -binary " .. JOURNAL .. " | openssl dgst -sha256 -hex")
    assert.matches("policy:      " .. JOURNAL .. " (policy " .. digest:match("= (%x+)"):sub(1, 12) .. ")",
                   out, 1, true)
    assert.matches("rule:      tools.delete_entry (" .. JOURNAL .. ":", out, 1, true)
    assert.matches('requires:  { all_of = { "journal:admin" }, why = "permanent deletion" }', out, 1, true)
    assert.matches("decision:    403 insufficient_scope", out, 1, true)
    assert.matches('challenge:   WWW-Authenticate: Bearer realm="journal", error="insufficient_scope", ' ..
      'scope="journal:admin journal:entries:read", resource_metadata="' .. RM ..
      '", error_description="Scope journal:admin is required (permanent deletion)."\n', out, 1, true)
  end)

  it("answers 401 for an anonymous caller and allows a public tool", function()
    local out = sg("explain " .. JOURNAL .. " --message " .. call)
    assert.matches("decision:    401 unauthorized", out, 1, true)
    assert.matches('WWW-Authenticate: Bearer realm="journal", scope="journal:admin", resource_metadata=', out, 1, true)
    out = sg("explain " .. JOURNAL .. " --message -", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ping"}}')
    assert.matches("decision:    allow", out, 1, true)
  end)

  it("exits with a status per outcome: 0 allow, 3 401, 4 403, 5 denied", function()
    local function tool(name) return "'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"" .. name .. "\"}}'" end
    local reader = " --claims '{\"scope\":\"journal:entries:read\"}'"
    local _, _, code = sg("explain " .. JOURNAL .. reader .. " --message " .. tool("list_entries"))
    assert.equal(0, code)
    _, _, code = sg("explain " .. JOURNAL .. " --message " .. tool("list_entries"))
    assert.equal(3, code)
    _, _, code = sg("explain " .. JOURNAL .. reader .. " --message " .. tool("tag_entry"))
    assert.equal(4, code)
    _, _, code = sg("explain " .. JOURNAL .. reader .. " --message " .. tool("no_such_tool"))
    assert.equal(5, code)
    local out
    out, _, code = sg("explain --help")
    assert.equal(0, code)
    assert.matches("Exit status: 0 allow, 3 401 unauthorized, 4 403 insufficient_scope", out, 1, true)
  end)

  it("decides a batch as a whole", function()
    local batch = '[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_entries"}},' ..
      '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"tag_entry"}}]'
    local out = sg("explain " .. JOURNAL .. " --claims '{\"scope\":\"journal:entries:read\"}' --message -", batch)
    assert.matches("message 2:   tools/call tag_entry", out, 1, true)
    assert.matches('scope="journal:entries:read journal:entries:write"', out, 1, true)
  end)

  it("reports a malformed body and refused claims precisely", function()
    local out, _, code = sg("explain " .. JOURNAL .. " --message '{\"jsonrpc\":\"2.0\",'")
    assert.equal(6, code)
    assert.matches("decision:    400 (JSON-RPC -32700)", out, 1, true)
    local _, err
    _, err, code = sg("explain " .. JOURNAL .. " --claims '{\"scope\":\"bad\\\\\\\"scope\"}' --message " .. call)
    assert.equal(1, code)
    assert.matches("the claims are refused", err, 1, true)
    _, err, code = sg("explain " .. JOURNAL .. " --message " .. call .. " --header nocolon")
    assert.equal(1, code)
    assert.matches("--header needs 'Name: value'", err, 1, true)
  end)
end)

describe("scopegate token", function()
  local dir, rsa, p256
  setup(function()
    dir = K.tmpdir()
    rsa = K.gen(dir, "rsa")
    p256 = K.gen(dir, "p256")
  end)
  teardown(function() os.execute(K.CLEAN .. "rm -rf " .. K.q(dir)) end)

  it("mints tokens our verifier accepts, with the key's own alg", function()
    for _, key in ipairs { { rsa, "RS256" }, { p256, "ES256" } } do
      local out, err, code = sg("token --key " .. K.q(key[1].priv_file) ..
        " --scope 'notes:read notes:write' --aud https://notes.example.com/mcp --iss https://as --ttl 120 --kid k1")
      assert.equal(0, code, err)
      local tok = out:gsub("%s+$", "")
      local header = K.unb64url((K.split(tok)))
      assert.matches('"alg":"' .. key[2] .. '"', header, 1, true)
      local v = assert(core.verifier { issuer = "https://as", audience = "https://notes.example.com/mcp",
        keys = { { pem = key[1].pub, alg = key[2], kid = "k1" } } })
      local t = assert(v:verify(tok))
      assert.same({ "notes:read", "notes:write" }, t.scopes)
      assert.equal("dev-user", t.sub)
      assert.is_true(t.exp - os.time() <= 120 and t.exp - os.time() > 100)
    end
  end)

  it("explains a bad key or flag in one line", function()
    local _, err, code = sg("token --key /nonexistent/key.pem")
    assert.equal(1, code)
    assert.matches("cannot read key /nonexistent/key.pem", err, 1, true)
    _, err, code = sg("token --key " .. K.q(rsa.pub_file))
    assert.equal(1, code)
    assert.matches("is not an RSA, EC or Ed25519/Ed448 private key", err, 1, true)
    _, err, code = sg("token --key " .. K.q(rsa.priv_file) .. " --ttl -5")
    assert.equal(2, code)
    assert.matches("--ttl needs a whole number", err, 1, true)
  end)
end)

describe("the README", function()
  it("shows the minimal policy exactly as shipped", function()
    local readme = K.read("README.md")
    local block = readme:match("```lua\n(%-%- policies/examples/minimal%.lua\n.-)```")
    assert.is_string(block)
    assert.equal(K.read("policies/examples/minimal.lua"), block)
  end)
end)

-- Every default of `scopegate serve` is written once, in src/cli/defaults.h:
-- the usage text prints it from there and serve applies it from there. These
-- fail when a default is written anywhere else, or when what --help prints
-- is not what the binary does.
describe("scopegate serve defaults", function()
  local usage = sg("serve --help")
  local function default_of(flag)
    -- The bracketed default closing the flag's entry (continuation lines
    -- included).
    local entry = usage:match("\n  " .. flag:gsub("%-", "%%-") .. " .-%[([^%]]+)%]")
    assert(entry, flag .. ": no default in the usage text")
    return entry
  end

  it("prints no default the usage text spells out itself", function()
    local src = K.read("src/cli/serveopts.c")
    local text = assert(src:match("\nvoid serve_usage%(FILE %*f%)\n(.-)\n}\n"))
    local literal = text:match("%[%d+%]") or text:match("%[/[%w/]*%]") or
                    text:match("%[oauthScope%]") or text:match("%[info%]") or
                    text:match("%[basic%]")
    assert.is_nil(literal, "a default written in the usage text: " .. tostring(literal))
  end)

  it("uses every default of defaults.h and defines none elsewhere in src/cli", function()
    local header = K.read("src/cli/defaults.h")
    local used = K.read("src/cli/serveopts.c") .. K.read("src/cli/serve.c")
    local n = 0
    for name in header:gmatch("#define (SG_DEFAULT_[%w_]+)") do
      n = n + 1
      assert.truthy(used:find(name .. "[^%w_]"), name .. " is not used by serve")
    end
    assert.is_true(n >= 20)
    for _, f in ipairs { "src/cli/serveopts.c", "src/cli/serve.c" } do
      assert.is_nil(K.read(f):find("#define SG_DEFAULT_", 1, true), f)
    end
  end)

  it("applies the --max-body and --path defaults it prints", function()
    local max_body = assert(tonumber(default_of("--max-body BYTES")))
    local path = default_of("--path PATH")
    local dir = K.tmpdir()
    local key = K.gen(dir, "rsa", "rsa")
    local up_pid, up = procs.echo_upstream(dir)
    local gw_pid, gw = procs.start_gateway(table.concat({ "--upstream", K.q("http://" .. up .. "/mcp"),
      "--policy", K.q("policies/examples/minimal.lua"), "--public-key", K.q(key.pub_file) }, " "),
      dir .. "/gw.err")
    local function post(size)
      local head, tail = '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"', '"}}'
      local body = head .. string.rep("x", size - #head - #tail) .. tail
      assert.equal(size, #body)
      return procs.http { url = "http://" .. gw .. path, scratch = dir, method = "POST", body = body,
        headers = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                    "Expect:" } }
    end
    local at, over = post(max_body), post(max_body + 1)
    procs.stop(gw_pid)
    procs.stop(up_pid)
    local log = procs.read_file(dir .. "/gw.err") or ""
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
    assert.are.equal(200, at.status, log)  -- the default path is served, and a body of exactly the default passes
    assert.equal(413, over.status, log)    -- one byte more is refused
  end)
end)
