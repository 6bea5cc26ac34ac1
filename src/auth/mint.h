/* mint.h -- development tokens: JWS compact tokens signed with a PEM private
 * key or an HMAC secret.
 *
 * For `scopegate token`, the specs, fuzz/ and bench/. Not part of the
 * verifier (token.h): nothing on the request path calls these. */
#ifndef SG_MINT_H
#define SG_MINT_H

#include <stddef.h>

#include "base/sg.h"

/* The JWS alg a PEM private key signs with by default: RS256 for RSA, ES256/
 * ES384/ES512 by EC curve, EdDSA for Ed25519/Ed448. Returns a static string,
 * or NULL when the PEM is not a private key of those kinds. */
const char *sg_token_alg_for_key(const void *pem, size_t len);

/* Signs claims_json (used verbatim as the payload) with alg: key is a PEM
 * private key for RS*, PS*, ES* and EdDSA, or the secret bytes for HS*.
 * The header is header_json verbatim when given, else
 * {"alg":ALG,"typ":"JWT"} plus "kid" when kid is not NULL. Appends the
 * compact token to out. Returns 0, or -1 with a message in err. */
int sg_token_mint(const char *alg, const void *key, size_t keylen, const char *kid,
                  const char *header_json, const char *claims_json, sg_buf *out, char *err,
                  size_t errlen);

#endif
