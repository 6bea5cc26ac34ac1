-- token_spec.lua -- the token verifier, key sets, cache and minting, through
-- the real C code (require "scopegate.core"). Keys are generated per run by
-- tests/lib/keys.lua with the openssl CLI.
local core = require "scopegate.core"
local K = require "keys"

local NOW = 1700000000
local ISS = "https://as.example.com"
local AUD = "https://mcp.example.com/mcp"
local DEL = {} -- marks a claim to remove

local function claims(over)
  local c = { iss = ISS, sub = "alice", aud = AUD, exp = NOW + 3600, iat = NOW,
              scope = "files:read files:write" }
  for k, v in pairs(over or {}) do
    if v == DEL then c[k] = nil else c[k] = v end
  end
  return K.json(c)
end

local SECRETS = { HS256 = ("k"):rep(32), HS384 = ("s"):rep(48), HS512 = ("t"):rep(64) }

-- alg -> key name (PEM) for the asymmetric algorithms
local ASYM = {
  { "RS256", "rsa" }, { "RS384", "rsa" }, { "RS512", "rsa" },
  { "PS256", "rsa" }, { "PS384", "rsa" }, { "PS512", "rsa" },
  { "ES256", "p256" }, { "ES384", "p384" }, { "ES512", "p521" },
  { "EdDSA", "ed25519" }, { "EdDSA", "ed448" },
}

describe("token verification", function()
  local dir, keys, pem_v

  local function mint(alg, keyname, over, kid, header)
    local t = { alg = alg, claims = type(over) == "string" and over or claims(over), kid = kid,
                header = header }
    if SECRETS[alg] and not keyname then t.secret = SECRETS[alg] else t.key_pem = keys[keyname].priv end
    return assert(core.mint(t))
  end

  local function refusal(v, tok, now)
    local ok, code, msg = v:verify(tok, now or NOW)
    assert.is_nil(ok)
    assert.is_string(msg)
    return code
  end

  setup(function()
    dir = K.tmpdir()
    keys = {}
    for _, name in ipairs { "rsa", "rsa2", "p256", "p384", "p521", "ed25519", "ed448" } do
      keys[name] = K.gen(dir, name)
    end
    local list = {}
    for _, c in ipairs(ASYM) do
      list[#list + 1] = { pem = keys[c[2]].pub, alg = c[1], kid = c[2] }
    end
    for alg, secret in pairs(SECRETS) do list[#list + 1] = { secret = secret, alg = alg, kid = alg } end
    pem_v = assert(core.verifier { issuer = ISS, audience = AUD, keys = list })
  end)

  teardown(function()
    os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
  end)

  describe("valid tokens", function()
    it("verifies every algorithm with PEM keys and secrets", function()
      for _, c in ipairs(ASYM) do
        local r = pem_v:verify(mint(c[1], c[2], nil, c[2]), NOW)
        assert.is_table(r, c[1] .. " with " .. c[2])
        assert.equal("alice", r.sub)
        assert.equal(ISS, r.iss)
        assert.equal(NOW + 3600, r.exp)
        assert.same({ "files:read", "files:write" }, r.scopes)
        assert.equal(AUD, r.claims.aud)
      end
      for alg in pairs(SECRETS) do
        local r = pem_v:verify(mint(alg, nil, nil, alg), NOW)
        assert.is_table(r, alg)
        assert.equal("alice", r.sub)
      end
    end)

    it("verifies through a JWKS file (keys bound by type when the JWK has no alg)", function()
      local jwks = {}
      for _, name in ipairs { "rsa", "p256", "p384", "p521", "ed25519", "ed448" } do
        jwks[#jwks + 1] = K.jwk(keys[name], name, { use = "sig" })
      end
      K.write(dir .. "/jwks.json", K.jwks(jwks))
      local v = assert(core.verifier { issuer = ISS, audience = AUD, jwks_file = dir .. "/jwks.json" })
      for _, c in ipairs(ASYM) do
        local r, code = v:verify(mint(c[1], c[2], nil, c[2]), NOW)
        assert.is_table(r, c[1] .. " " .. tostring(code))
        assert.equal("alice", r.sub)
      end
      assert.equal(6, v:key_stats().nkeys)
    end)

    it("verifies through a JWKS URL", function()
      local jwks = {}
      for _, name in ipairs { "rsa", "p256", "p384", "p521", "ed25519", "ed448" } do
        jwks[#jwks + 1] = K.jwk(keys[name], name)
      end
      K.write(dir .. "/url-jwks.json", K.jwks(jwks))
      local srv = K.jwks_server(dir, dir .. "/url-jwks.json")
      finally(srv.stop)
      local v = assert(core.verifier { issuer = ISS, audience = AUD, jwks_url = srv.url })
      for _, c in ipairs(ASYM) do
        local r, code = v:verify(mint(c[1], c[2], nil, c[2]), NOW)
        assert.is_table(r, c[1] .. " " .. tostring(code))
      end
      assert.equal(1, srv.hits())
      assert.equal(1, v:key_stats().fetches)
    end)

    it("accepts the allowed typ values, float dates and at+jwt", function()
      for _, typ in ipairs { "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt" } do
        local h = K.json { alg = "ES256", kid = "p256", typ = typ }
        assert.is_table(pem_v:verify(mint("ES256", "p256", nil, nil, h), NOW), typ)
      end
      local h = K.json { alg = "ES256", kid = "p256" } -- no typ at all
      assert.is_table(pem_v:verify(mint("ES256", "p256", nil, nil, h), NOW))
      local r = pem_v:verify(mint("ES256", "p256", { exp = NOW + 10.5, iat = NOW - 0.25 }, "p256"), NOW)
      assert.equal(NOW + 10, r.exp)
    end)

    it("applies the leeway (60 s by default) to exp, nbf and iat", function()
      assert.is_table(pem_v:verify(mint("ES256", "p256", { exp = NOW - 59 }, "p256"), NOW))
      assert.is_table(pem_v:verify(mint("ES256", "p256", { nbf = NOW + 59 }, "p256"), NOW))
      assert.is_table(pem_v:verify(mint("ES256", "p256", { iat = NOW + 59 }, "p256"), NOW))
      local strict = assert(core.verifier { leeway = 0, keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      assert.equal("expired", refusal(strict, mint("ES256", "p256", { exp = NOW })))
      assert.is_table(strict:verify(mint("ES256", "p256", { exp = NOW + 1 }), NOW))
    end)

    it("compares the audience as a canonical resource URI", function()
      local function aud(a) return pem_v:verify(mint("ES256", "p256", { aud = a }, "p256"), NOW) end
      assert.is_table(aud("HTTPS://MCP.Example.COM/mcp/"))
      assert.is_table(aud({ "https://other.example.com", AUD }))
      assert.is_nil(aud("https://mcp.example.com/MCP")) -- the path keeps its case
      assert.is_nil(aud(AUD .. "#frag"))
      assert.is_nil(aud(AUD .. "/x"))
      local v, err = core.verifier { audience = AUD .. "#f", keys = { { pem = keys.p256.pub, alg = "ES256" } } }
      assert.is_nil(v)
      assert.matches("fragment", err)
    end)

    it("collects scopes from scope and scp, deduplicated in token order", function()
      local r = pem_v:verify(mint("ES256", "p256", { scope = "  b a  b ", scp = { "c", "a" } }, "p256"), NOW)
      assert.same({ "b", "a", "c" }, r.scopes)
      r = pem_v:verify(mint("ES256", "p256", { scope = DEL, scp = "x y" }, "p256"), NOW)
      assert.same({ "x", "y" }, r.scopes)
      r = pem_v:verify(mint("ES256", "p256", { scope = DEL }, "p256"), NOW)
      assert.same({}, r.scopes)
    end)

    it("takes client_id, else azp", function()
      assert.equal("c1", pem_v:verify(mint("ES256", "p256", { client_id = "c1", azp = "c2" }, "p256"), NOW).client_id)
      assert.equal("c2", pem_v:verify(mint("ES256", "p256", { azp = "c2" }, "p256"), NOW).client_id)
      assert.is_nil(pem_v:verify(mint("ES256", "p256", nil, "p256"), NOW).client_id)
    end)

    it("can allow tokens without exp when configured", function()
      local v = assert(core.verifier { require_exp = false, keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      local r = v:verify(mint("ES256", "p256", { exp = DEL }), NOW)
      assert.equal(math.maxinteger, r.exp)
    end)

    it("uses a kid-less token only when exactly one key is bound to its alg", function()
      local one = assert(core.verifier { keys = { { pem = keys.rsa.pub, alg = "RS256", kid = "a" } } })
      assert.is_table(one:verify(mint("RS256", "rsa", {}), NOW))
      local two = assert(core.verifier { keys = { { pem = keys.rsa.pub, alg = "RS256", kid = "a" },
                                                  { pem = keys.rsa2.pub, alg = "RS256", kid = "b" } } })
      assert.equal("kid_required", refusal(two, mint("RS256", "rsa", {})))
      assert.is_table(two:verify(mint("RS256", "rsa2", {}, "b"), NOW))
    end)
  end)

  describe("cross-checks with independent implementations", function()
    it("verifies tokens minted by libjwt (RS256, ES256, HS256)", function()
      local v = assert(core.verifier { issuer = ISS, audience = AUD, keys = {
        { pem = keys.rsa.pub, alg = "RS256" }, { pem = keys.p256.pub, alg = "ES256" },
        { secret = SECRETS.HS256, alg = "HS256" } } })
      for _, c in ipairs { { "RS256", keys.rsa.priv }, { "ES256", keys.p256.priv }, { "HS256", SECRETS.HS256 } } do
        local tok = assert(core.libjwt_encode(c[1], c[2], claims()))
        local r, code = v:verify(tok, NOW)
        assert.is_table(r, c[1] .. " " .. tostring(code))
        assert.equal("alice", r.sub)
        -- and a libjwt token with a tampered payload is refused
        local h, _, s = K.split(tok)
        assert.equal("bad_signature", refusal(v, h .. "." .. K.b64url(claims { sub = "mallory" }) .. "." .. s))
      end
    end)

    it("mints RS256 and PS256 signatures that openssl dgst verifies", function()
      assert.is_true(K.openssl_verify(dir, mint("RS256", "rsa", nil, "rsa"), keys.rsa.pub_file, "sha256"))
      assert.is_true(K.openssl_verify(dir, mint("PS256", "rsa", nil, "rsa"), keys.rsa.pub_file, "sha256", true))
      assert.is_true(K.openssl_verify(dir, mint("RS512", "rsa", nil, "rsa"), keys.rsa.pub_file, "sha512"))
      -- and the check can fail: a signature over other bytes
      local h, _, s = K.split(mint("RS256", "rsa"))
      assert.is_false(K.openssl_verify(dir, h .. "." .. K.b64url("{}") .. "." .. s, keys.rsa.pub_file, "sha256"))
    end)

    it("encodes base64url like an independent implementation", function()
      for _, s in ipairs { "", "a", "ab", "abc", "abcd", "\0\255\254", ("x"):rep(100) } do
        assert.equal(K.b64url(s), core.b64url_encode(s))
        assert.equal(s, core.b64url_decode(K.b64url(s)))
      end
      assert.is_nil(core.b64url_decode("YQ==")) -- padding
      assert.is_nil(core.b64url_decode("YR"))   -- non-canonical trailing bits
      assert.is_nil(core.b64url_decode("Y+"))   -- standard alphabet
      assert.is_nil(core.b64url_decode("Y"))    -- impossible length
    end)

    it("decodes every byte value in every position of a quad as the alphabet says", function()
      local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
      for b = 0, 255 do
        local ch = string.char(b)
        local in_alphabet = alphabet:find(ch, 1, true) ~= nil
        for pos = 1, 4 do
          local quad = ("QUFB"):sub(1, pos - 1) .. ch .. ("QUFB"):sub(pos + 1)
          if in_alphabet then
            assert.equal(K.unb64url(quad), core.b64url_decode(quad), "byte " .. b .. " at " .. pos)
            if pos <= 2 then -- canonical tails decode too
              assert.equal(K.unb64url("QUFBQUA"), core.b64url_decode("QUFBQUA"))
              assert.equal(K.unb64url("QUFBQQ"), core.b64url_decode("QUFBQQ"))
            end
          else
            assert.is_nil(core.b64url_decode(quad), "byte " .. b .. " at " .. pos)
            assert.is_nil(core.b64url_decode(quad .. "QQ"), "byte " .. b .. " at " .. pos)
            -- in a tail of three or two (the rest of it canonical: "QUA", "QQ")
            if pos <= 3 then
              local tail = ("QUA"):sub(1, pos - 1) .. ch .. ("QUA"):sub(pos + 1)
              assert.is_nil(core.b64url_decode("QUFB" .. tail), "byte " .. b .. " in a tail of 3")
            end
            if pos <= 2 then
              local tail = ("QQ"):sub(1, pos - 1) .. ch .. ("QQ"):sub(pos + 1)
              assert.is_nil(core.b64url_decode("QUFB" .. tail), "byte " .. b .. " in a tail of 2")
            end
          end
        end
      end
    end)
  end)

  describe("refusals", function()
    local seen = {}
    local function expect(code, v, tok, now)
      assert.equal(code, refusal(v, tok, now))
      seen[code] = true
    end

    it("every code has a safe, distinct name and message", function()
      local names, messages = {}, {}
      for code, e in pairs(core.token_errors()) do
        assert.is_nil(names[e.name])
        assert.is_nil(messages[e.message])
        names[e.name], messages[e.message] = code, code
        assert.matches("^[%w ,.%-]+$", e.message)
      end
    end)

    it("no key at all", function()
      expect("no_key", assert(core.verifier {}), mint("RS256", "rsa", nil, "rsa"))
    end)

    it("alg none, in any letter case", function()
      for _, none in ipairs { "none", "None", "NONE" } do
        expect("alg_none", pem_v, K.raw_token(K.json { alg = none, typ = "JWT" }, claims(), ""))
      end
    end)

    it("alg not allowed for the key (HMAC with the RSA public PEM, unknown alg)", function()
      -- the classic confusion: HS256 keyed with the RSA public key's PEM bytes
      local forged = assert(core.mint { alg = "HS256", secret = keys.rsa.pub, kid = "rsa", claims = claims() })
      expect("alg_not_allowed", pem_v, forged)
      local only_rsa = assert(core.verifier { keys = { { pem = keys.rsa.pub, alg = "RS256" } } })
      expect("alg_not_allowed", only_rsa, assert(core.mint { alg = "HS256", secret = keys.rsa.pub, claims = claims() }))
      expect("alg_not_allowed", only_rsa, mint("PS256", "rsa")) -- the PEM was bound to RS256 only
      expect("alg_not_allowed", pem_v, K.raw_token(K.json { alg = "XS256", kid = "rsa" }, claims(), "sig"))
      -- and libjwt-style HS256 with the PEM as the key, no kid
      expect("alg_not_allowed", only_rsa, assert(core.libjwt_encode("HS256", keys.rsa.pub, claims())))
    end)

    it("unknown kid", function()
      expect("unknown_kid", pem_v, mint("RS256", "rsa", nil, "nope"))
    end)

    it("bad signature (tampered payload, tampered signature, wrong key)", function()
      local tok = mint("RS256", "rsa", nil, "rsa")
      local h, _, s = K.split(tok)
      expect("bad_signature", pem_v, h .. "." .. K.b64url(claims { sub = "admin" }) .. "." .. s)
      local mid = #s // 2
      local flipped = s:sub(1, mid - 1) .. (s:sub(mid, mid) == "A" and "B" or "A") .. s:sub(mid + 1)
      expect("bad_signature", pem_v, h .. "." .. select(2, K.split(tok)) .. "." .. flipped)
      expect("bad_signature", pem_v, mint("RS256", "rsa2", nil, "rsa"))
      expect("bad_signature", pem_v, mint("ES256", "p256", nil, "p256"):gsub("%.[^.]*$", "." .. K.b64url(("\1"):rep(63))))
      expect("bad_signature", pem_v, mint("HS256", nil, nil, "HS256"):gsub("%.[^.]*$", "." .. K.b64url(("\1"):rep(32))))
    end)

    it("expired, not yet valid, issued in the future", function()
      expect("expired", pem_v, mint("ES256", "p256", { exp = NOW - 61 }, "p256"))
      expect("not_yet_valid", pem_v, mint("ES256", "p256", { nbf = NOW + 61 }, "p256"))
      expect("iat_in_future", pem_v, mint("ES256", "p256", { iat = NOW + 61 }, "p256"))
    end)

    it("wrong or missing issuer", function()
      expect("wrong_issuer", pem_v, mint("ES256", "p256", { iss = "https://evil.example.com" }, "p256"))
      expect("wrong_issuer", pem_v, mint("ES256", "p256", { iss = DEL }, "p256"))
      expect("wrong_issuer", pem_v, mint("ES256", "p256", { iss = ISS .. "/" }, "p256"))
    end)

    it("audience missing or wrong", function()
      expect("audience_missing", pem_v, mint("ES256", "p256", { aud = DEL }, "p256"))
      expect("wrong_audience", pem_v, mint("ES256", "p256", { aud = "https://other.example.com/mcp" }, "p256"))
      expect("wrong_audience", pem_v, mint("ES256", "p256", { aud = K.empty_array() }, "p256"))
    end)

    it("malformed segments and JSON", function()
      local good = mint("ES256", "p256", nil, "p256")
      local h, p, s = K.split(good)
      expect("malformed", pem_v, "!!!." .. p .. "." .. s)
      expect("malformed", pem_v, h .. "=." .. p .. "." .. s)       -- padding
      expect("malformed", pem_v, h .. "." .. p .. "." .. s .. "=")
      expect("malformed", pem_v, K.b64url("[1]") .. "." .. p .. "." .. s) -- header not an object
      expect("malformed", pem_v, K.b64url("{") .. "." .. p .. "." .. s)
      expect("malformed", pem_v, K.b64url('{"kid":"p256"}') .. "." .. p .. "." .. s) -- no alg
      expect("malformed", pem_v, K.b64url('{"alg":"ES256","kid":"p256"} x') .. "." .. p .. "." .. s)
      expect("malformed", pem_v, "." .. p .. "." .. s)
      expect("malformed", pem_v, h .. "." .. p .. ".")
      -- signed payloads that are not a JSON object
      expect("malformed", pem_v, mint("ES256", "p256", "not json", "p256"))
      expect("malformed", pem_v, mint("ES256", "p256", '["a"]', "p256"))
      expect("malformed", pem_v, mint("ES256", "p256", claims() .. "junk", "p256"))
      -- strings cJSON would silently cut, and invalid UTF-8
      expect("malformed", pem_v, mint("ES256", "p256", claims { sub = "alice" }:gsub('"alice"', '"alice\\u0000admin"'), "p256"))
      expect("malformed", pem_v, mint("ES256", "p256", claims { sub = "alice" }:gsub('"alice"', '"al\255ice"'), "p256"))
      -- a non-canonical base64url spelling of the same header (trailing bits)
      local hb = K.unb64url(h)
      if #hb % 3 ~= 0 then
        local last = h:sub(-1)
        local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        local idx = alphabet:find(last, 1, true)
        local tweaked = h:sub(1, -2) .. alphabet:sub(idx + 1, idx + 1)
        expect("malformed", pem_v, tweaked .. "." .. p .. "." .. s)
      end
    end)

    it("wrong segment count", function()
      expect("wrong_segment_count", pem_v, "")
      expect("wrong_segment_count", pem_v, "abc")
      expect("wrong_segment_count", pem_v, "a.b")
      expect("wrong_segment_count", pem_v, mint("ES256", "p256", nil, "p256") .. ".x")
    end)

    it("too large, before any parsing", function()
      expect("too_large", pem_v, ("a"):rep(16385)) -- would otherwise be a segment-count error
      local big = mint("ES256", "p256", { pad = ("x"):rep(16384) }, "p256")
      expect("too_large", pem_v, big)
      local roomy = assert(core.verifier { max_size = 65536, issuer = ISS, audience = AUD,
                                           keys = { { pem = keys.p256.pub, alg = "ES256", kid = "p256" } } })
      assert.is_table(roomy:verify(big, NOW))
      assert.equal("too_large", select(2, pem_v:verify_cached(("a"):rep(16385), NOW)))
    end)

    it("crit present", function()
      expect("crit_present", pem_v, mint("ES256", "p256", nil, nil, K.json { alg = "ES256", kid = "p256", crit = { "exp" } }))
    end)

    it("typ not allowed", function()
      expect("typ_not_allowed", pem_v, mint("ES256", "p256", nil, nil, K.json { alg = "ES256", kid = "p256", typ = "dpop+jwt" }))
      expect("typ_not_allowed", pem_v, mint("ES256", "p256", nil, nil, '{"alg":"ES256","kid":"p256","typ":1}'))
    end)

    it("claims of the wrong type", function()
      for _, over in ipairs {
        { exp = tostring(NOW + 3600) }, { nbf = true }, { iat = "now" }, { sub = 42 }, { iss = { ISS } },
        { aud = 7 }, { aud = { AUD, 7 } }, { scope = { "a", "b" } }, { scp = { "a", 1 } }, { client_id = false },
      } do
        expect("claim_wrong_type", pem_v, mint("ES256", "p256", over, "p256"))
      end
      expect("claim_wrong_type", pem_v, mint("ES256", "p256", claims():gsub('"exp":%d+', '"exp":1e999'), "p256"))
    end)

    it("exp missing", function()
      expect("exp_missing", pem_v, mint("ES256", "p256", { exp = DEL }, "p256"))
    end)

    it("invalid scope token", function()
      expect("invalid_scope_token", pem_v, mint("ES256", "p256", { scope = 'files:read "quoted"' }, "p256"))
      expect("invalid_scope_token", pem_v, mint("ES256", "p256", { scope = "a\\b" }, "p256"))
      expect("invalid_scope_token", pem_v, mint("ES256", "p256", { scope = DEL, scp = { "ok", "has space" } }, "p256"))
      expect("invalid_scope_token", pem_v, mint("ES256", "p256", { scope = DEL, scp = { "" } }, "p256"))
      local many = {}
      for i = 1, 257 do many[i] = "s" .. i end
      expect("invalid_scope_token", pem_v, mint("ES256", "p256", { scope = table.concat(many, " ") }, "p256"))
    end)

    it("duplicate JSON keys in payload or header, at any depth", function()
      local dup = claims():gsub('"sub":"alice"', '"sub":"alice","sub":"admin"')
      expect("duplicate_key", pem_v, mint("ES256", "p256", dup, "p256"))
      expect("duplicate_key", pem_v, mint("ES256", "p256", claims { cnf = { jkt = "a" } }:gsub('"jkt":"a"', '"jkt":"a","jkt":"b"'), "p256"))
      expect("duplicate_key", pem_v, mint("ES256", "p256", nil, nil, '{"alg":"ES256","kid":"p256","kid":"rsa"}'))
    end)

    it("produced twenty distinct codes above", function()
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      assert.equal(20, n)
    end)
  end)

  describe("JWKS contents", function()
    it("skips keys that are not for signatures and never derives HMAC keys", function()
      local jwks = K.jwks {
        K.jwk(keys.rsa, "enc", { use = "enc" }),
        { kty = "oct", k = K.b64url(SECRETS.HS256), kid = "hs", alg = "HS256" },
        K.jwk(keys.rsa2, "rs-only", { alg = "RS256" }),
        K.jwk(keys.p256, "wrong-alg", { alg = "ES384" }),
      }
      local v = assert(core.verifier { jwks = jwks })
      assert.equal(1, v:key_stats().nkeys)
      assert.equal("unknown_kid", refusal(v, mint("RS256", "rsa", nil, "enc")))
      assert.equal("unknown_kid", refusal(v, assert(core.mint { alg = "HS256", secret = SECRETS.HS256, kid = "hs", claims = claims() })))
      assert.equal("alg_not_allowed", refusal(v, mint("PS256", "rsa2", nil, "rs-only")))
      assert.is_table(v:verify(mint("RS256", "rsa2", nil, "rs-only"), NOW))
    end)

    it("refuses documents without a usable key, and bad key points", function()
      assert.is_nil(core.verifier { jwks = "[]" })
      assert.is_nil(core.verifier { jwks = K.jwks { { kty = "oct", k = "AAAA" } } })
      local bad = K.jwk(keys.p256, "bad")
      bad.y = bad.x -- not on the curve
      local v, err = core.verifier { jwks = K.jwks { bad } }
      assert.is_nil(v)
      assert.matches("no usable", err)
      assert.is_nil(core.verifier { jwks_file = dir .. "/does-not-exist.json" })
    end)
  end)

  describe("JWKS URL refetch", function()
    it("refetches once for an unknown kid, picks up a rotated key, then rate-limits", function()
      local path = dir .. "/rot-jwks.json"
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1") })
      local srv = K.jwks_server(dir, path)
      finally(srv.stop)
      local v = assert(core.verifier { issuer = ISS, audience = AUD, jwks_url = srv.url, refetch_interval = 30 })
      assert.equal(1, srv.hits())
      assert.is_table(v:verify(mint("RS256", "rsa", nil, "k1"), NOW))
      assert.equal(1, srv.hits())
      -- the authorization server rotates k2 in; the first k2 token triggers the refetch
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1"), K.jwk(keys.rsa2, "k2") })
      local r, code = v:verify(mint("RS256", "rsa2", nil, "k2"), NOW)
      assert.is_table(r, code)
      assert.equal(2, srv.hits())
      -- an attacker's stream of unknown kids causes no further fetch inside the interval
      for i = 1, 5 do
        assert.equal("unknown_kid", refusal(v, mint("RS256", "rsa2", nil, "attacker" .. i)))
      end
      assert.equal(2, srv.hits())
      assert.equal(2, v:key_stats().fetches)
    end)

    it("allows the next refetch after the interval, and refreshes on the TTL", function()
      local path = dir .. "/ttl-jwks.json"
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1") })
      local srv = K.jwks_server(dir, path)
      finally(srv.stop)
      local v = assert(core.verifier { jwks_url = srv.url, refetch_interval = 0.2, jwks_ttl = 600 })
      assert.equal("unknown_kid", refusal(v, mint("RS256", "rsa2", nil, "k9")))
      assert.equal("unknown_kid", refusal(v, mint("RS256", "rsa2", nil, "k9")))
      assert.equal(2, srv.hits())
      os.execute(K.CLEAN .. "sleep 0.3")
      assert.equal("unknown_kid", refusal(v, mint("RS256", "rsa2", nil, "k9")))
      assert.equal(3, srv.hits())
      assert.is_true(v:refresh())
      assert.equal(4, srv.hits())

      local t = assert(core.verifier { jwks_url = srv.url, jwks_ttl = 0.3 })
      local before = srv.hits()
      assert.is_table(t:verify(mint("RS256", "rsa", nil, "k1"), NOW))
      assert.equal(before, srv.hits())
      os.execute(K.CLEAN .. "sleep 0.4")
      assert.is_table(t:verify(mint("RS256", "rsa", nil, "k1"), NOW))
      assert.equal(before + 1, srv.hits())
    end)

    it("refreshes on the TTL in the background, without a request waiting for it", function()
      local path = dir .. "/bg-jwks.json"
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1") })
      local srv = K.jwks_server(dir, path)
      finally(srv.stop)
      local t = assert(core.verifier { jwks_url = srv.url, jwks_ttl = 0.2, background_refresh = true })
      local before = srv.hits()
      -- a key rotated in is picked up by the refresher alone, with no request in between
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1"), K.jwk(keys.rsa2, "k2") })
      os.execute(K.CLEAN .. "sleep 0.5")
      assert.is_true(srv.hits() >= before + 1)
      local hits = srv.hits()
      assert.is_table(t:verify(mint("RS256", "rsa2", nil, "k2"), NOW))
      assert.is_true(srv.hits() <= hits + 1) -- at most the refresher's own next tick
    end)

    it("reports a failed fetch at start", function()
      local path = dir .. "/start-jwks.json"
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1") })
      local srv = K.jwks_server(dir, path)
      finally(srv.stop)
      local v, err = core.verifier { jwks_url = srv.base .. "/status/500" }
      assert.is_nil(v)
      assert.matches("HTTP status 500", err)
      K.write(path, "not json")
      v, err = core.verifier { jwks_url = srv.url }
      assert.is_nil(v)
      assert.matches("not a JWKS", err)
      v, err = core.verifier { jwks_url = "http://127.0.0.1:1/jwks.json" }
      assert.is_nil(v)
      assert.matches("fetching JWKS failed", err)
      v, err = core.verifier { jwks_url = "file:///etc/passwd" }
      assert.is_nil(v)
    end)

    it("keeps the old keys when a refresh fails", function()
      local path = dir .. "/keep-jwks.json"
      K.write(path, K.jwks { K.jwk(keys.rsa, "k1") })
      local srv = K.jwks_server(dir, path)
      finally(srv.stop)
      local v = assert(core.verifier { jwks_url = srv.url })
      K.write(path, "{}")
      local ok, err = v:refresh()
      assert.is_nil(ok)
      assert.is_string(err)
      assert.is_table(v:verify(mint("RS256", "rsa", nil, "k1"), NOW))
      assert.equal(1, v:key_stats().fetch_failures)
    end)
  end)

  -- The claims are read in one pass over the verified payload, without a
  -- tree (the tree is built only when asked for): these payloads are
  -- written by hand to reach what a JSON encoder rarely emits.
  describe("claims read in one pass", function()
    local function payload(body)
      return "{" .. body .. ',"aud":"' .. AUD .. '","exp":' .. (NOW + 3600) .. "}"
    end

    it("decodes escaped strings as JSON says (\\/, \\u, surrogate pairs)", function()
      local tok = mint("ES256", "p256", payload(
        '"iss":"https:\\/\\/as.example.com","sub":"al\\u0069ce \\u00e9\\ud83d\\ude00\\n",' ..
        '"client_id":"a\\"b","scope":"files:read\\u0020files:write"'))
      local r = assert(pem_v:verify(tok, NOW))
      assert.equal(ISS, r.iss)
      assert.equal("alice \u{e9}\u{1f600}\n", r.sub)
      assert.equal('a"b', r.client_id)
      assert.same({ "files:read", "files:write" }, r.scopes)
      assert.equal(r.sub, r.claims.sub)
    end)

    it("reads a member whose name is escaped as that member", function()
      local tok = mint("ES256", "p256", '{"\\u0069ss":"' .. ISS .. '","aud":"' .. AUD ..
                       '","\\u0065xp":' .. (NOW - 4000) .. "}")
      assert.equal("expired", refusal(pem_v, tok))
      tok = mint("ES256", "p256", payload('"iss":"' .. ISS .. '","sc\\u006fpe":"a b"'))
      assert.same({ "a", "b" }, assert(pem_v:verify(tok, NOW)).scopes)
      local v = assert(core.verifier { required_claims = { "jti" },
                                       keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      assert.is_table(v:verify(mint("ES256", "p256", payload('"j\\u0074i":"1"')), NOW))
      assert.equal("claim_missing", refusal(v, mint("ES256", "p256", payload('"jt":"1"'))))
    end)

    it("ignores members of the same names inside nested objects and arrays", function()
      local tok = mint("ES256", "p256", payload('"iss":"' .. ISS .. '","x":{"scope":"admin",' ..
        '"exp":1,"y":[{"scope":"root","s":"}]\\"{["}]},"scope":"files:read","z":[1,[2,{}],"]"]'))
      local r = assert(pem_v:verify(tok, NOW))
      assert.same({ "files:read" }, r.scopes)
      assert.equal("admin", r.claims.x.scope)
      assert.equal("root", r.claims.x.y[1].scope)
    end)

    it("still refuses claims of the wrong type, and an audience list with a non-string", function()
      assert.equal("claim_wrong_type", refusal(pem_v, mint("ES256", "p256", payload('"iss":null'))))
      assert.equal("claim_wrong_type", refusal(pem_v, mint("ES256", "p256", payload('"nbf":"1"'))))
      assert.equal("claim_wrong_type", refusal(pem_v, mint("ES256", "p256",
        '{"iss":"' .. ISS .. '","aud":["' .. AUD .. '",1],"exp":' .. (NOW + 60) .. "}")))
      assert.equal("claim_wrong_type", refusal(pem_v, mint("ES256", "p256", payload('"iss":"' .. ISS ..
        '","scp":["a",{}]'))))
      assert.equal("claim_wrong_type", refusal(pem_v, mint("ES256", "p256",
        '{"iss":"' .. ISS .. '","aud":"' .. AUD .. '","exp":1e999}')))
    end)

    it("reuses a worker's verification contexts across keys, algorithms and failures", function()
      -- One cache (one set of reused OpenSSL contexts), more (key, alg)
      -- pairs than it keeps, a bad signature in between: every answer must
      -- be what an uncached verify says.
      local v = assert(core.verifier { issuer = ISS, audience = AUD, keys = {
        { pem = keys.rsa.pub, alg = "RS256", kid = "r1" }, { pem = keys.rsa.pub, alg = "PS256", kid = "p1" },
        { pem = keys.rsa2.pub, alg = "RS256", kid = "r2" }, { pem = keys.p256.pub, alg = "ES256", kid = "e1" },
        { pem = keys.p384.pub, alg = "ES384", kid = "e2" }, { pem = keys.ed25519.pub, alg = "EdDSA", kid = "d1" },
      }, cache_size = 4 })
      local uses = { { "RS256", "rsa", "r1" }, { "PS256", "rsa", "p1" }, { "RS256", "rsa2", "r2" },
                     { "ES256", "p256", "e1" }, { "ES384", "p384", "e2" }, { "EdDSA", "ed25519", "d1" } }
      for round = 1, 3 do
        for i, u in ipairs(uses) do
          local tok = mint(u[1], u[2], { sub = "u" .. round .. "-" .. i }, u[3])
          local r = assert(v:verify_cached(tok, NOW))
          assert.equal("u" .. round .. "-" .. i, r.sub)
          local h, p, sig = K.split(tok)
          local bad = h .. "." .. p .. "." .. (sig:sub(1, 1) == "A" and "B" or "A") .. sig:sub(2)
          assert.equal("bad_signature", select(2, v:verify_cached(bad, NOW)))
          -- wrong key for the kid: the other RSA key's signature
          if u[1] == "RS256" then
            local other = mint("RS256", u[2] == "rsa" and "rsa2" or "rsa", { sub = "x" }, u[3])
            assert.equal("bad_signature", select(2, v:verify_cached(other, NOW)))
          end
        end
      end
    end)
  end)

  describe("verified-token cache", function()
    it("returns the same claims on a hit", function()
      local v = assert(core.verifier { issuer = ISS, audience = AUD, keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      local tok = mint("ES256", "p256", { client_id = "app" })
      local a = assert(v:verify_cached(tok, NOW))
      local b = assert(v:verify_cached(tok, NOW + 5))
      assert.same(a, b)
      assert.equal("app", b.client_id)
      local s = v:cache_stats()
      assert.equal(1, s.hits)
      assert.equal(1, s.misses)
      assert.equal(1, s.size)
      -- other bytes are never a hit, even with the same claims
      local h, p, sig = K.split(tok)
      assert.equal("bad_signature", select(2, v:verify_cached(h .. "." .. p .. "." .. sig:sub(1, -3) .. "AA", NOW)))
      assert.equal(1, v:cache_stats().hits)
      -- nor the same end (the part the cache hashes) after other bytes,
      -- of the same length or not
      local other = K.b64url(claims { sub = "mallory", client_id = "app" })
      assert.is_nil((v:verify_cached(h .. "." .. other .. "." .. sig, NOW)))
      assert.is_nil((v:verify_cached("x" .. tok:sub(2), NOW)))
      assert.is_nil((v:verify_cached("e" .. tok, NOW)))
      assert.equal(1, v:cache_stats().hits)
      assert.same(a, assert(v:verify_cached(tok, NOW + 6)))
      assert.equal(2, v:cache_stats().hits)
    end)

    it("re-verifies a cached token at its exp (and refuses it after the leeway)", function()
      local v = assert(core.verifier { keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      local tok = mint("ES256", "p256", { exp = NOW + 100 })
      assert.is_table(v:verify_cached(tok, NOW))
      assert.is_table(v:verify_cached(tok, NOW + 99))
      assert.equal(1, v:cache_stats().hits)
      -- at exp the cache does not answer; verification (with leeway) still accepts
      assert.is_table(v:verify_cached(tok, NOW + 100))
      local s = v:cache_stats()
      assert.equal(1, s.hits)
      assert.equal(1, s.expired)
      assert.equal(0, s.size) -- inside the leeway window it is not cached again
      local ok, code = v:verify_cached(tok, NOW + 161)
      assert.is_nil(ok)
      assert.equal("expired", code)
    end)

    it("is bounded and evicts", function()
      local v = assert(core.verifier { cache_size = 3, keys = { { pem = keys.p256.pub, alg = "ES256" } } })
      local toks = {}
      for i = 1, 5 do
        toks[i] = mint("ES256", "p256", { jti = "t" .. i })
        assert.is_table(v:verify_cached(toks[i], NOW))
      end
      local s = v:cache_stats()
      assert.equal(3, s.size)
      assert.equal(3, s.capacity)
      assert.equal(2, s.evictions)
      assert.equal(0, s.hits)
      -- the newest is still cached; the first was evicted
      assert.equal("t5", v:verify_cached(toks[5], NOW).claims.jti)
      assert.equal(1, v:cache_stats().hits)
      assert.equal("t1", v:verify_cached(toks[1], NOW).claims.jti)
      assert.equal(1, v:cache_stats().hits)
    end)
  end)

  describe("bindings", function()
    it("validate their arguments", function()
      assert.has_error(function() core.verifier("x") end)
      assert.has_error(function() core.verifier { issuer = 5 } end)
      assert.has_error(function() core.verifier { keys = { { pem = "x" } } } end)
      assert.has_error(function() core.verifier { keys = "x" } end)
      assert.has_error(function() core.verifier { leeway = -1 } end)
      assert.has_error(function() pem_v:verify({}) end)
      assert.has_error(function() pem_v.verify(nil, "x") end)
      assert.has_error(function() core.mint {} end)
      assert.has_error(function() core.mint { alg = "RS256", claims = "{}" } end)
      assert.has_error(function() core.libjwt_encode("none", "k", "{}") end)
      assert.has_error(function() core.b64url_decode() end)
    end)

    it("report configuration errors without crashing", function()
      local function fails(cfg, pattern)
        local v, err = core.verifier(cfg)
        assert.is_nil(v)
        assert.matches(pattern, err)
      end
      fails({ keys = { { pem = "junk", alg = "RS256" } } }, "PEM")
      fails({ keys = { { pem = keys.rsa.pub, alg = "HS256" } } }, "secret")
      fails({ keys = { { pem = keys.rsa.pub, alg = "ES256" } } }, "does not fit")
      fails({ keys = { { pem = keys.p256.pub, alg = "ES384" } } }, "does not fit")
      fails({ keys = { { secret = "short", alg = "HS256" } } }, "32")
      fails({ keys = { { secret = SECRETS.HS256, alg = "RS256" } } }, "HS256")
      fails({ keys = { { file = dir .. "/nope.pub", alg = "RS256" } } }, "cannot read")
      assert.is_userdata(core.verifier { keys = { { file = keys.rsa.pub_file, alg = "RS256" } } })
      assert.is_nil(core.mint { alg = "ES256", key_pem = keys.rsa.priv, claims = "{}" })
      assert.is_nil(core.mint { alg = "RS256", key_pem = "junk", claims = "{}" })
    end)
  end)
end)
