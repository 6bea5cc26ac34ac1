/* base64url.h -- unpadded base64url (RFC 4648 section 5) as JWS uses it.
 *
 * The decoder is strict on purpose: a token has exactly one valid spelling,
 * so padding, characters outside the url-safe alphabet, an impossible
 * length, or non-zero unused trailing bits are all refused. That keeps two
 * different byte strings from verifying as the same token. */
#ifndef SG_BASE64URL_H
#define SG_BASE64URL_H

#include <stddef.h>

#include "base/sg.h"

/* The most bytes a decode of `len` characters can produce. Can't fail. */
static inline size_t sg_b64url_decoded_max(size_t len)
{
    return len / 4 * 3 + 2;
}

/* Decodes `len` characters of unpadded base64url into `out`, which must have
 * room for sg_b64url_decoded_max(len) bytes. Returns the decoded length, or
 * -1 when the input is not canonical unpadded base64url. Never reads past
 * in[len - 1]. */
long sg_b64url_decode(const char *in, size_t len, unsigned char *out);

/* Appends the unpadded base64url encoding of n bytes to out. Can't fail
 * (allocation failure is recorded in the buffer). */
void sg_b64url_encode(sg_buf *out, const unsigned char *in, size_t n);

#endif
