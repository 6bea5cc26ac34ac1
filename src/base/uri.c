/* uri.c -- the normal form of a resource URI (see uri.h).
 *
 * Why a file of its own: the policy (matching), the MCP parser (refusing
 * what is not in normal form) and the Lua module (tests, `scopegate
 * explain`) must agree byte for byte on what a URI normalises to. */
#include "base/uri.h"

#include <string.h>

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(unsigned char c)
{
    if (is_digit(c)) return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int is_unreserved(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Percent-encodings of s[0..n) normalised into out. -1 with *why when one
 * is refused. */
static int normalize_percent(const char *s, size_t n, sg_buf *out, const char **why)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F) {
            *why = "it holds a control character";
            return -1;
        }
        if (c == '\\') {
            *why = "it holds a '\\'";
            return -1;
        }
        if (c != '%') {
            sg_buf_putc(out, (char)c);
            continue;
        }
        int hi = i + 1 < n ? hex_value((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? hex_value((unsigned char)s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            *why = "it has a '%' not followed by two hexadecimal digits";
            return -1;
        }
        unsigned char v = (unsigned char)(hi * 16 + lo);
        if (v == 0 || v == '/' || v == '\\') {
            *why = v == 0     ? "it has an encoded NUL (%00)"
                   : v == '/' ? "it has an encoded '/' (%2F)"
                              : "it has an encoded '\\' (%5C)";
            return -1;
        }
        if (is_unreserved(v)) {
            sg_buf_putc(out, (char)v);
        } else {
            sg_buf_putc(out, '%');
            sg_buf_putc(out, hex[v >> 4]);
            sg_buf_putc(out, hex[v & 15]);
        }
        i += 2;
    }
    return 0;
}

/* Appends path p[0..n) with its dot segments removed: "." goes, ".."
 * takes the segment before it away (a trailing one leaves a '/'). -1 when a
 * ".." has no segment left to take. */
static int remove_dot_segments(const char *p, size_t n, sg_buf *out, const char **why)
{
    size_t base = out->len;
    size_t i = 0;
    if (n > 0 && p[0] == '/') {
        sg_buf_putc(out, '/');
        i = 1;
    }
    size_t root = out->len; /* segments start here */
    for (;;) {
        size_t start = i;
        while (i < n && p[i] != '/')
            i++;
        size_t sl = i - start;
        int last = i >= n;
        const char *seg = p + start;
        if (sl == 1 && seg[0] == '.') {
            /* dropped; a trailing "." leaves the '/' before it */
        } else if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
            if (out->len == root) {
                *why = "its path climbs above the root with \"..\"";
                out->len = base;
                return -1;
            }
            /* Take the last segment (and the '/' ending the one before). */
            size_t e = out->len;
            if (out->data[e - 1] == '/') e--; /* output ends "seg/" or "seg" */
            while (e > root && out->data[e - 1] != '/')
                e--;
            out->len = e;
        } else {
            sg_buf_append(out, seg, sl);
            if (!last) sg_buf_putc(out, '/');
        }
        if (last) break;
        i++; /* the '/' */
    }
    if (!sg_buf_ok(out)) out->len = base;
    return 0;
}

int sg_uri_normalize(const char *uri, size_t len, sg_buf *out, const char **why)
{
    const char *ignored;
    if (!why) why = &ignored;
    /* scheme ":" ..., or a relative reference (RFC 3986 section 4.2) whose
     * first segment must then hold no ':' (it would read as a scheme). */
    size_t s = 0;
    while (s < len && (is_alpha((unsigned char)uri[s]) ||
                       (s > 0 && (is_digit((unsigned char)uri[s]) || uri[s] == '+' ||
                                  uri[s] == '-' || uri[s] == '.'))))
        s++;
    int scheme = s > 0 && s < len && uri[s] == ':';
    if (!scheme) {
        s = 0;
        size_t k = 0;
        while (k < len && uri[k] != '/' && uri[k] != '?' && uri[k] != '#' && uri[k] != ':')
            k++;
        if (k < len && uri[k] == ':') {
            *why = "it has a ':' in its first segment but no valid scheme";
            return -1;
        }
    }
    size_t skip = scheme ? s + 1 : 0;
    sg_buf rest = SG_BUF_INIT;
    int rc = normalize_percent(uri + skip, len - skip, &rest, why);
    if (rc == 0 && !sg_buf_ok(&rest)) {
        sg_buf_free(&rest);
        out->oom = 1;
        return 0;
    }
    const char *r = rest.data ? rest.data : "";
    size_t rn = rest.len, i = 0;
    if (rc == 0) {
        for (size_t k = 0; k < s; k++)
            sg_buf_putc(out, lower(uri[k]));
        if (scheme) sg_buf_putc(out, ':');
        int authority = rn >= 2 && r[0] == '/' && r[1] == '/';
        if (authority) {
            size_t a = 2;
            while (a < rn && r[a] != '/' && r[a] != '?' && r[a] != '#')
                a++;
            /* userinfo@host:port -- only the host is case-insensitive. */
            size_t host = 2;
            for (size_t k = 2; k < a; k++)
                if (r[k] == '@') host = k + 1;
            size_t host_end = a;
            if (host < a && r[host] == '[') {
                const char *close = memchr(r + host, ']', a - host);
                if (close) host_end = (size_t)(close - r) + 1;
            } else {
                const char *colon = memchr(r + host, ':', a - host);
                if (colon) host_end = (size_t)(colon - r);
            }
            for (size_t k = 0; k < a; k++)
                sg_buf_putc(out, k >= host && k < host_end ? lower(r[k]) : r[k]);
            i = a;
        }
        size_t p = i;
        while (p < rn && r[p] != '?' && r[p] != '#')
            p++;
        size_t path_at = out->len;
        rc = remove_dot_segments(r + i, p - i, out, why);
        if (rc == 0 && !authority && out->len - path_at >= 2 && out->data[path_at] == '/' &&
            out->data[path_at + 1] == '/') {
            *why = "its path would begin with \"//\" (read as an authority)";
            rc = -1;
        }
        if (rc == 0) sg_buf_append(out, r + p, rn - p);
    }
    sg_buf_free(&rest);
    if (rc == 0 && sg_buf_ok(out)) {
        sg_buf_putc(out, '\0');
        if (sg_buf_ok(out)) out->len--; /* the NUL stays after the text */
    }
    return rc;
}
