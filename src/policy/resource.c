/* resource.c -- resource keys: literal URIs, globs and RFC 6570 templates.
 *
 * Compiled and checked (RFC 3986 normal form) at load, matched at decide
 * time; both halves live here so the meaning of a key has one owner. */
#include "policy/policy_impl.h"

#include "base/uri.h"

#include <ctype.h>
#include <string.h>

#include <lauxlib.h>

/* In a resource template key, a byte a {var} never matches: it would
 * leave the path segment (RFC 3986: '/' separates segments, '?' starts
 * the query, '#' the fragment). */
static int segment_byte(unsigned char c)
{
    return c != '/' && c != '?' && c != '#';
}

/* RFC 6570 varname: varchar *( ["."] varchar ), varchar = ALPHA / DIGIT /
 * "_" / pct-encoded. Returns 1 when s[0..len) is one. */
static int template_varname(const char *s, size_t len)
{
    if (len == 0 || s[0] == '.' || s[len - 1] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return 0;
            i += 2;
        } else if (c == '.') {
            if (s[i + 1] == '.') return 0;
        } else if (!isalnum(c) && c != '_') {
            return 0;
        }
    }
    return 1;
}

/* Compiles a resource key holding RFC 6570 expressions into r->tmpl: a
 * literal byte matches itself, `*` any run (as in globs), {var} one or more
 * bytes within a path segment (no '/', '?' or '#'), {+var} one or more of
 * any bytes. Other operators, lists and modifiers are refused with a hint.
 * Returns 0, or -1 after reporting. */
int policy_compile_template(loader *ld, rule *r)
{
    const char *k = r->key;
    size_t len = r->keylen;
    tmpl_part *parts = sg_arena_alloc(&ld->p->arena, 2 * len * sizeof *parts);
    if (!parts) luaL_error(ld->L, "out of memory");
    size_t n = 0;
    char q[160];
    for (size_t i = 0; i < len; i++) {
        if (k[i] == '}') {
            policy_finding(ld, 1, r->line, r->name, "'}' without '{' in resource template %s",
                           policy_quoted(q, sizeof q, k, len));
            return -1;
        }
        if (k[i] != '{') {
            r->literal += k[i] != '*';
            r->unrestricted += k[i] == '*';
            parts[n++] = (tmpl_part){k[i] == '*' ? TP_ANYSTAR : TP_LIT, (unsigned char)k[i]};
            continue;
        }
        const char *close = memchr(k + i, '}', len - i);
        const char *open = memchr(k + i + 1, '{', len - i - 1);
        if (!close || (open && open < close)) {
            policy_finding(ld, 1, r->line, r->name, "unclosed '{' in resource template %s",
                           policy_quoted(q, sizeof q, k, len));
            return -1;
        }
        size_t elen = (size_t)(close - (k + i)) + 1; /* "{...}" */
        int reserved = k[i + 1] == '+';
        const char *var = k + i + 1 + reserved;
        if (!template_varname(var, (size_t)(close - var))) {
            policy_finding(
                ld, 1, r->line, r->name,
                "unsupported URI template expression %s in resource key (keys take RFC 6570 "
                "{name}, one path segment, and {+name}, any text across '/'; write * for "
                "anything else)",
                policy_quoted(q, sizeof q, k + i, elen));
            return -1;
        }
        parts[n++] = (tmpl_part){reserved ? TP_ANY1 : TP_SEG1, 0};
        parts[n++] = (tmpl_part){reserved ? TP_ANYSTAR : TP_SEGSTAR, 0};
        r->unrestricted += (size_t)reserved;
        i += elen - 1;
    }
    r->tmpl = parts;
    r->ntmpl = n;
    return 0;
}

/* Matches s against a compiled template: a set-of-states simulation, so
 * the cost is at most (template steps) x (URI bytes) whatever the shape. */
static int template_match(const tmpl_part *t, size_t n, const char *s, size_t slen)
{
    unsigned char cur[2 * MAX_NAME_LEN + 1], next[2 * MAX_NAME_LEN + 1];
    memset(cur, 0, n + 1);
    cur[0] = 1;
    for (size_t i = 0; i < n; i++) /* star steps may match nothing */
        if (cur[i] && (t[i].kind == TP_ANYSTAR || t[i].kind == TP_SEGSTAR)) cur[i + 1] = 1;
    for (size_t j = 0; j < slen; j++) {
        unsigned char c = (unsigned char)s[j];
        int any = 0;
        memset(next, 0, n + 1);
        for (size_t i = 0; i < n; i++) {
            if (!cur[i]) continue;
            switch (t[i].kind) {
            case TP_LIT:
                if (t[i].c == c) next[i + 1] = 1;
                break;
            case TP_ANY1:
                next[i + 1] = 1;
                break;
            case TP_SEG1:
                if (segment_byte(c)) next[i + 1] = 1;
                break;
            case TP_ANYSTAR:
                next[i] = 1;
                break;
            case TP_SEGSTAR:
                if (segment_byte(c)) next[i] = 1;
                break;
            }
        }
        for (size_t i = 0; i < n; i++)
            if (next[i] && (t[i].kind == TP_ANYSTAR || t[i].kind == TP_SEGSTAR)) next[i + 1] = 1;
        for (size_t i = 0; i <= n; i++)
            any |= (cur[i] = next[i]);
        if (!any) return 0;
    }
    return cur[n];
}

/* URIs are decided in their normal form (uri.h), so a literal key or a
 * pattern's text in another form would never match: an error that names
 * the form to write. A pattern whose scheme is a wildcard is not checked
 * (it has no scheme to normalise). Returns 1 when the key was refused. */
int policy_resource_key_abnormal(loader *ld, const rule *r, const char *k, size_t len)
{
    size_t s = 0;
    while (s < len && k[s] != ':' && k[s] != '/' && k[s] != '*')
        s++;
    if (s < len && k[s] == '*') return 0;
    char q[160], q2[160];
    sg_buf norm = SG_BUF_INIT;
    const char *why = NULL;
    int rc = sg_uri_normalize(k, len, &norm, &why);
    if (rc == 0 && !sg_buf_ok(&norm)) {
        sg_buf_free(&norm);
        luaL_error(ld->L, "out of memory");
    }
    int bad = rc != 0 || norm.len != len || memcmp(norm.data, k, len) != 0;
    if (rc != 0)
        policy_finding(ld, 1, r->line, r->name, "resource key %s has no RFC 3986 normal form: %s",
                       policy_quoted(q, sizeof q, k, len), why);
    else if (bad)
        policy_finding(ld, 1, r->line, r->name,
                       "resource key %s is not in RFC 3986 normal form, so it would never match "
                       "(URIs are matched in normal form): write %s",
                       policy_quoted(q, sizeof q, k, len),
                       policy_quoted(q2, sizeof q2, norm.data, norm.len));
    sg_buf_free(&norm);
    return bad;
}

int policy_glob_order(const void *a, const void *b)
{
    const rule *x = *(rule *const *)a, *y = *(rule *const *)b;
    if (x->literal != y->literal) return x->literal > y->literal ? -1 : 1;
    if (x->unrestricted != y->unrestricted) return x->unrestricted < y->unrestricted ? -1 : 1;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return x->keylen < y->keylen ? -1 : x->keylen > y->keylen;
}

static int glob_match(const char *pat, size_t plen, const char *s, size_t slen)
{
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
    while (si < slen) {
        if (pi < plen && pat[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (pi < plen && pat[pi] == s[si]) {
            pi++;
            si++;
        } else if (star != (size_t)-1) {
            pi = star + 1;
            si = ++mark;
        } else {
            return 0;
        }
    }
    while (pi < plen && pat[pi] == '*')
        pi++;
    return pi == plen;
}

const rule *policy_find_resource(const sg_policy *p, const char *uri)
{
    size_t len = strlen(uri);
    const rule *r = policy_map_get(&p->maps[T_RESOURCES], uri, len);
    if (r) return r;
    for (size_t i = 0; i < p->nglobs; i++) {
        const rule *g = p->globs[i];
        if (g->tmpl ? template_match(g->tmpl, g->ntmpl, uri, len)
                    : glob_match(g->key, g->keylen, uri, len))
            return g;
    }
    return NULL;
}
