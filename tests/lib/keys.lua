-- keys.lua -- test-time key material and token helpers for the token specs.
--
-- Keys are generated with the openssl CLI into a fresh temp dir on every
-- run (never committed). JWKs are built from openssl's own output (modulus
-- hex, DER point bytes), not by our C code, so a JWKS test checks our
-- JWK->EVP_PKEY conversion against an independent source. base64url and a
-- tiny JSON encoder are plain Lua for the same reason.
local M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.q = sh_quote

-- Child processes must not inherit the sanitizer runtime the spec runner
-- preloads (LeakSanitizer aborts plain tools such as mktemp at exit).
local CLEAN = "unset LD_PRELOAD; "
M.CLEAN = CLEAN

-- Runs a shell command and returns its stdout; errors when it fails.
function M.run(cmd)
  local p = assert(io.popen(CLEAN .. cmd .. " 2>/dev/null", "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  if not ok then error("command failed (" .. tostring(code) .. "): " .. cmd) end
  return out
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function M.tmpdir()
  return (M.run("mktemp -d /tmp/sg-token-spec.XXXXXX"):gsub("%s+$", ""))
end

-- ---- base64url and JSON ------------------------------------------------------

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function M.b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local n = c and 4 or b and 3 or 2
    for k = 1, n do
      local idx = (v >> (6 * (4 - k))) & 63
      out[#out + 1] = alphabet:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

function M.unb64url(s)
  local map = {}
  for i = 1, #alphabet do map[alphabet:sub(i, i)] = i - 1 end
  local bits, nbits, out = 0, 0, {}
  for ch in s:gmatch(".") do
    bits = (bits << 6) | assert(map[ch], "bad base64url")
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      out[#out + 1] = string.char((bits >> nbits) & 255)
    end
  end
  return table.concat(out)
end

local function hex_to_bytes(hex)
  return (hex:gsub("%s", ""):gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

-- Minimal JSON for test claims: strings, numbers, booleans, arrays
-- (sequences) and objects (sorted keys, so output is deterministic).
function M.json(v)
  local t = type(v)
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil and getmetatable(v) == M.array_mt then
      local parts = {}
      for i = 1, #v do parts[i] = M.json(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = M.json(k) .. ":" .. M.json(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot encode " .. t)
end
M.array_mt = {}
function M.empty_array() return setmetatable({}, M.array_mt) end

-- ---- keys ---------------------------------------------------------------------

local specs = {
  rsa = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
  rsa2 = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
  p256 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
  p384 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-384",
  p521 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-521",
  ed25519 = "-algorithm ED25519",
  ed448 = "-algorithm ED448",
}

-- Generates one key: { name, priv, pub (PEM text), priv_file, pub_file }.
function M.gen(dir, name, kind)
  local priv_file, pub_file = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".pub"
  M.run("openssl genpkey " .. assert(specs[kind or name], "unknown key kind") .. " -out " ..
        sh_quote(priv_file))
  M.run("openssl pkey -in " .. sh_quote(priv_file) .. " -pubout -out " .. sh_quote(pub_file))
  return { name = name, kind = kind or name, priv = M.read(priv_file), pub = M.read(pub_file),
           priv_file = priv_file, pub_file = pub_file }
end

-- A JWK (as a Lua table) for a generated key, from openssl's own output.
function M.jwk(key, kid, extra)
  local j
  if key.kind:match("^rsa") then
    local modulus = M.run("openssl rsa -pubin -in " .. sh_quote(key.pub_file) .. " -noout -modulus")
    local text = M.run("openssl rsa -pubin -in " .. sh_quote(key.pub_file) .. " -noout -text")
    assert(text:find("65537", 1, true), "unexpected RSA exponent")
    j = { kty = "RSA", n = M.b64url(hex_to_bytes(modulus:match("Modulus=(%x+)"))), e = "AQAB" }
  else
    local der = M.run("openssl pkey -pubin -in " .. sh_quote(key.pub_file) .. " -outform DER")
    local ec = { p256 = { "P-256", 32 }, p384 = { "P-384", 48 }, p521 = { "P-521", 66 } }
    local okp = { ed25519 = { "Ed25519", 32 }, ed448 = { "Ed448", 57 } }
    if ec[key.kind] then
      local crv, n = ec[key.kind][1], ec[key.kind][2]
      local point = der:sub(-(2 * n + 1))
      assert(point:byte(1) == 4, "expected an uncompressed point")
      j = { kty = "EC", crv = crv, x = M.b64url(point:sub(2, n + 1)), y = M.b64url(point:sub(n + 2)) }
    else
      local crv, n = okp[key.kind][1], okp[key.kind][2]
      j = { kty = "OKP", crv = crv, x = M.b64url(der:sub(-n)) }
    end
  end
  j.kid = kid
  for k, v in pairs(extra or {}) do j[k] = v end
  return j
end

function M.jwks(list)
  return M.json({ keys = list })
end

-- ---- tokens ---------------------------------------------------------------------

-- Assembles a token from raw header and payload JSON text and a raw
-- signature (bytes), without any signing: for crafted refusals.
function M.raw_token(header_json, payload_json, sig)
  return M.b64url(header_json) .. "." .. M.b64url(payload_json) .. "." .. M.b64url(sig or "")
end

-- The largest token a verifier takes by default (16 KiB), within 100 bytes
-- of it: mint(pad) mints a token whose claims carry a "pad" string of that
-- many bytes; the pad shrinks until the token fits.
M.MAX_TOKEN = 16384
function M.largest_token(mint)
  local pad, tok = 11900, nil
  repeat
    tok = mint(string.rep("p", pad))
    pad = pad - 50
  until #tok <= M.MAX_TOKEN
  assert(#tok > M.MAX_TOKEN - 100, "token of " .. #tok .. " bytes")
  return tok
end

-- Splits a compact token into its three segments.
function M.split(tok)
  return tok:match("^([^.]*)%.([^.]*)%.([^.]*)$")
end

-- Verifies a token's signature with `openssl dgst` (independent of our
-- verifier). Returns true when openssl says "Verified OK".
function M.openssl_verify(dir, tok, pub_file, digest, pss)
  local h, p, s = M.split(tok)
  M.write(dir .. "/signing-input", h .. "." .. p)
  M.write(dir .. "/sig.bin", M.unb64url(s))
  local opts = pss and " -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest" or ""
  local p2 = io.popen(CLEAN .. "openssl dgst -" .. digest .. opts .. " -verify " .. sh_quote(pub_file) ..
                      " -signature " .. sh_quote(dir .. "/sig.bin") .. " " ..
                      sh_quote(dir .. "/signing-input") .. " 2>&1")
  local out = p2:read("a")
  p2:close()
  return out:find("Verified OK", 1, true) ~= nil
end

-- ---- the JWKS peer -------------------------------------------------------------

-- Starts tests/peers/jwks_server.py serving `jwks_path` (re-read on every
-- request, so writing the file swaps the keys). Returns a handle with
-- url, hits() and stop().
function M.jwks_server(dir, jwks_path)
  local port_file = dir .. "/jwks-port"
  os.remove(port_file)
  local pid = M.run("python3 tests/peers/jwks_server.py " .. sh_quote(jwks_path) .. " " ..
                    sh_quote(port_file) .. " >/dev/null 2>&1 & echo $!"):match("%d+")
  local port
  for _ = 1, 100 do
    local f = io.open(port_file, "r")
    if f then
      port = f:read("l")
      f:close()
      if port and port:match("^%d+$") then break end
    end
    os.execute(CLEAN .. "sleep 0.05")
  end
  assert(port, "jwks_server did not start")
  local base = "http://127.0.0.1:" .. port
  return {
    url = base .. "/jwks.json",
    base = base,
    hits = function()
      local f = io.open(port_file .. ".hits", "r")
      if not f then return 0 end
      local n = tonumber(f:read("l"))
      f:close()
      return n or 0
    end,
    stop = function() os.execute(CLEAN .. "kill " .. pid .. " 2>/dev/null") end,
  }
end

return M
