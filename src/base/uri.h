/* uri.h -- the normal form of a resource URI (RFC 3986 section 6.2.2).
 *
 * A policy matches resource URIs as strings, and an upstream resolves them
 * as URIs: `file:///entries/../admin` and `file:///entries/%2e%2e/admin`
 * are strings under the pattern `file:///entries/` + `*`, but both name
 * `file:///admin`. So a
 * URI is matched in its normal form only, and what has no unambiguous
 * normal form is refused. The normal form:
 *   - the scheme in lower case, the host of an authority in lower case
 *     (6.2.2.1);
 *   - percent-encodings in upper case, those of unreserved characters
 *     (ALPHA DIGIT - . _ ~) decoded (6.2.2.1, 6.2.2.2);
 *   - dot segments of the path removed (6.2.2.3, 5.2.4).
 * A relative reference (no scheme) is normalised the same way. Other bytes
 * (a space, non-ASCII) are kept as they are: they delimit nothing.
 * Refused: a ':' in the first segment without a valid scheme before it; a
 * control character, or '\' (which WHATWG URL parsers read as '/'); '%'
 * not followed by two hex
 * digits; %00, %2F and %5C (an encoded NUL, '/' or '\' is one segment to
 * one reader and several to another); a ".." that would climb above the
 * root (5.2.4 silently drops it; an upstream joining paths may not); a
 * path without an authority that would begin with "//" once normalised. */
#ifndef SG_URI_H
#define SG_URI_H

#include <stddef.h>

#include "base/sg.h"

/* Appends the normal form of uri[0..len) to out (NUL-terminated after
 * out->len). Returns 0; or -1 when the URI is refused, with *why set to a
 * static sentence fragment ("it has an encoded '/' (%2F)"); allocation
 * failure is recorded in out (sg_buf_ok), and out is left with whatever was
 * appended. Never reads past uri+len. */
int sg_uri_normalize(const char *uri, size_t len, sg_buf *out, const char **why);

#endif
