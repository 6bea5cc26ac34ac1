#!/usr/bin/env python3
"""fuzz/mktoken.py -- mints the test tokens of the fuzz seed corpora.

  fuzz/mktoken.py HS256 HEADER_JSON CLAIMS_JSON   (the FUZZ_SECRET of fuzz_common.h)
  fuzz/mktoken.py ES256 HEADER_JSON CLAIMS_JSON   (fuzz/keys/es256-private.pem, via openssl)

Prints the compact token. Header and claims are used verbatim, so seeds can
hold exactly the bytes a test needs (fixed iat/exp: the targets' clock is
fixed at 2026-01-01)."""
import base64, hashlib, hmac, os, subprocess, sys

SECRET = b"scopegate-fuzz-test-secret-32byt"
KEY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keys", "es256-private.pem")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_to_raw(der, n=32):
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        ln = der[i + 1]
        v = der[i + 2 : i + 2 + ln].lstrip(b"\0")
        out += v.rjust(n, b"\0")
        i += 2 + ln
    return out


def main():
    alg, header, claims = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
    signing = (b64(header) + "." + b64(claims)).encode()
    if alg == "HS256":
        sig = hmac.new(SECRET, signing, hashlib.sha256).digest()
    elif alg == "ES256":
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=signing,
                             capture_output=True, check=True).stdout
        sig = der_to_raw(der)
    else:
        sys.exit("alg must be HS256 or ES256")
    print(signing.decode() + "." + b64(sig))


main()
