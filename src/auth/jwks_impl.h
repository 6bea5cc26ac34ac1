/* jwks_impl.h -- what the key set's files share (not a public API; jwks.h
 * is).
 *
 * jwk.c turns one description (a JWK, a PEM's EVP_PKEY) into an sg_jwk
 * bound to its algorithms, and a JWKS document into an array of them;
 * jwks.c owns the key set: its static and fetched keys, the snapshots
 * readers take, the fetches and the refresher thread. */
#ifndef SG_JWKS_IMPL_H
#define SG_JWKS_IMPL_H

#include <stddef.h>

#include <openssl/evp.h>

#include "auth/jwks.h"

/* RSA keys shorter than this are refused, wherever they come from. */
#define MIN_RSA_BITS 2048

/* Frees what a key owns (the secret wiped first) and zeroes it. Can't
 * fail. */
void jwk_clear(sg_jwk *j);

/* Clears n keys and frees the array. NULL is fine. Can't fail. */
void jwk_array_free(sg_jwk *keys, int n);

/* Appends a key to a growable array, taking ownership of *j (cleared on
 * return either way). Returns 0, or -1 when out of memory. */
int jwk_array_push(sg_jwk **arr, int *n, sg_jwk *j);

/* The algorithms a public key's type allows; 0 for keys we refuse (RSA
 * under MIN_RSA_BITS, other curves, other key types). Can't fail. */
unsigned jwk_algs_for_pkey(EVP_PKEY *p);

/* 1 when kid is NULL or a non-empty string of at most 256 bytes. Can't
 * fail. */
int jwk_kid_ok(const char *kid);

/* Parses a JWKS document into a new array (freed with jwk_array_free).
 * JWKs that are not usable signature keys are skipped with a warning.
 * Returns the number of keys (>= 1), or -1 with a message in err (too
 * large, not a JWKS, no usable key, out of memory). */
int jwks_parse_doc(const char *json, size_t len, sg_jwk **out, char *err, size_t errlen);

#endif
