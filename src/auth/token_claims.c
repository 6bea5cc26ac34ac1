/* token_claims.c -- the claims of a token whose signature holds (or of an
 * introspection answer): their types, exp/nbf/iat with the leeway, the
 * issuer, the RFC 8707 audience, the claims the configuration requires and
 * the RFC 6749 scopes; then the public sg_token is filled from them.
 *
 * The claims are found in one walk over the payload (token_impl.h) and only
 * the values a token keeps are decoded; the cJSON tree is built later, only
 * when someone asks for it (sg_token_claims). */
#include "auth/token_impl.h"

#include <math.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "authz/scope.h"

/* ---- resource URIs ------------------------------------------------------------
 * RFC 8707 audiences compare as canonical resource URIs: scheme and host in
 * lower case, no trailing slash on the path, never a fragment. A value
 * without "scheme://" is compared byte for byte. */

long tok_canonical_resource(const char *s, size_t n, char *out, size_t cap)
{
    if (n + 1 > cap || memchr(s, '#', n)) return -1;
    size_t scheme_end = 0;
    while (scheme_end < n && scheme_end < 32 &&
           ((s[scheme_end] >= 'a' && s[scheme_end] <= 'z') ||
            (s[scheme_end] >= 'A' && s[scheme_end] <= 'Z') ||
            (scheme_end > 0 &&
             ((s[scheme_end] >= '0' && s[scheme_end] <= '9') || s[scheme_end] == '+' ||
              s[scheme_end] == '-' || s[scheme_end] == '.'))))
        scheme_end++;
    memcpy(out, s, n);
    out[n] = '\0';
    if (scheme_end == 0 || n - scheme_end < 3 || memcmp(s + scheme_end, "://", 3) != 0)
        return (long)n;
    size_t host_end = scheme_end + 3;
    while (host_end < n && s[host_end] != '/' && s[host_end] != '?')
        host_end++;
    for (size_t i = 0; i < host_end; i++)
        if (out[i] >= 'A' && out[i] <= 'Z') out[i] = (char)(out[i] - 'A' + 'a');
    const char *q = memchr(s + host_end, '?', n - host_end);
    size_t path_end = q ? (size_t)(q - s) : n;
    if (path_end > host_end && s[path_end - 1] == '/') { /* drop one trailing slash */
        memmove(out + path_end - 1, out + path_end, n - path_end + 1);
        n--;
    }
    return (long)n;
}

/* ---- claims ------------------------------------------------------------------- */

/* The claims verification reads, found in one walk over the payload. */
typedef struct claims_view {
    jvalue exp, nbf, iat, iss, sub, client_id, azp, aud, scope, scp;
    uint32_t required_seen; /* bit i: v->required_claims[i] is present */
} claims_view;

/* The slot of a claim whose name is written with escapes (rare: the walk
 * above matches plain names by length first), or NULL. */
static jvalue *escaped_claim(claims_view *c, const jvalue *key)
{
    static const struct {
        const char *name;
        size_t len, offset;
    } names[] = {
#define CLAIM(n) {#n, sizeof #n - 1, offsetof(claims_view, n)}
        CLAIM(exp), CLAIM(nbf), CLAIM(iat), CLAIM(iss),   CLAIM(sub),
        CLAIM(aud), CLAIM(azp), CLAIM(scp), CLAIM(scope), CLAIM(client_id),
#undef CLAIM
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(names); i++)
        if (tok_key_is(key, names[i].name, names[i].len))
            return (jvalue *)(void *)((char *)c + names[i].offset);
    return NULL;
}

static void read_claims(const sg_verifier *v, const char *json, size_t n, claims_view *c)
{
    memset(c, 0, sizeof *c);
    const char *end = json + n;
    jwalk w;
    jvalue key, val;
    jwalk_begin(&w, skip_ws(json, end), end);
    while (jwalk_next(&w, &key, &val)) {
        jvalue *slot = NULL;
        switch (key.len) {
        case 3:
            slot = KEY_IS(&key, "exp")   ? &c->exp
                   : KEY_IS(&key, "nbf") ? &c->nbf
                   : KEY_IS(&key, "iat") ? &c->iat
                   : KEY_IS(&key, "iss") ? &c->iss
                   : KEY_IS(&key, "sub") ? &c->sub
                   : KEY_IS(&key, "aud") ? &c->aud
                   : KEY_IS(&key, "azp") ? &c->azp
                   : KEY_IS(&key, "scp") ? &c->scp
                                         : NULL;
            break;
        case 5:
            slot = KEY_IS(&key, "scope") ? &c->scope : NULL;
            break;
        case 9:
            slot = KEY_IS(&key, "client_id") ? &c->client_id : NULL;
            break;
        default:
            break;
        }
        /* An escaped key can name any of them, whatever its raw length. */
        if (!slot && memchr(key.p, '\\', key.len)) slot = escaped_claim(c, &key);
        if (slot) *slot = val;
        for (int i = 0; i < v->nrequired_claims; i++)
            if (tok_key_is(&key, v->required_claims[i], strlen(v->required_claims[i])))
                c->required_seen |= (uint32_t)1 << i;
    }
}

/* A numeric date claim: 0 absent, 1 present (*out set), -1 wrong type. */
static int date_claim(const jvalue *c, double *out)
{
    if (!c->kind) return 0;
    if (c->kind != 'n' || c->len >= 64) return -1;
    char num[64];
    memcpy(num, c->p, c->len);
    num[c->len] = '\0';
    double d = strtod(num, NULL);
    if (!isfinite(d)) return -1;
    *out = d;
    return 1;
}

static int audience_matches(const sg_verifier *v, const char *aud)
{
    char canon[MAX_AUD_LEN];
    long n = tok_canonical_resource(aud, strlen(aud), canon, sizeof canon);
    return n >= 0 && strcmp(canon, v->audience) == 0;
}

/* Splits space-separated scopes in place and appends them to list.
 * Returns 0, or SG_TOKEN_INVALID_SCOPE. */
static sg_token_err split_scopes(char *text, const char **list, int *n)
{
    char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p) break;
        char *start = p;
        while (*p && *p != ' ')
            p++;
        if (*p) *p++ = '\0';
        if (*n >= SG_TOKEN_MAX_SCOPES) return SG_TOKEN_INVALID_SCOPE;
        list[(*n)++] = start;
    }
    return SG_TOKEN_OK;
}

/* Collects, validates and deduplicates scope (string) and scp (array of
 * strings, or string) into o. */
static sg_token_err collect_scopes(owned_token *o, const claims_view *c)
{
    const jvalue *scope = &c->scope, *scp = &c->scp;
    if (scope->kind && scope->kind != '"') return SG_TOKEN_CLAIM_TYPE;
    if (scp->kind && scp->kind != '"' && scp->kind != '[') return SG_TOKEN_CLAIM_TYPE;
    const char *found[SG_TOKEN_MAX_SCOPES];
    int n = 0;
    if (scope->kind && split_scopes(tok_keep_string(o, scope), found, &n))
        return SG_TOKEN_INVALID_SCOPE;
    if (scp->kind == '"' && split_scopes(tok_keep_string(o, scp), found, &n))
        return SG_TOKEN_INVALID_SCOPE;
    if (scp->kind == '[') {
        jwalk w;
        jvalue item;
        jwalk_begin(&w, scp->p, scp->p + scp->len);
        while (jwalk_next(&w, NULL, &item)) {
            if (item.kind != '"') return SG_TOKEN_CLAIM_TYPE;
            if (n >= SG_TOKEN_MAX_SCOPES) return SG_TOKEN_INVALID_SCOPE;
            found[n++] = tok_keep_string(o, &item);
        }
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        const char *s = found[i];
        if (!sg_scope_token_valid(s, strlen(s))) return SG_TOKEN_INVALID_SCOPE;
        int dup = 0;
        for (int j = 0; j < kept && !dup; j++)
            dup = strcmp(found[j], s) == 0;
        if (!dup) found[kept++] = s;
    }
    o->scope_list = o->scope_inline;
    if ((size_t)kept > SG_ARRAY_LEN(o->scope_inline) &&
        !(o->scope_list = malloc((size_t)kept * sizeof *o->scope_list))) {
        o->scope_list = o->scope_inline;
        return SG_TOKEN_INTERNAL;
    }
    memcpy(o->scope_list, found, (size_t)kept * sizeof *found);
    o->pub.nscopes = kept;
    o->pub.scopes = o->scope_list;
    return SG_TOKEN_OK;
}

sg_token_err tok_check_claims(const sg_verifier *v, owned_token *o, int64_t now)
{
    claims_view c;
    read_claims(v, o->json, o->json_len, &c);
    double exp = 0, nbf = 0, iat = 0;
    int has_exp = date_claim(&c.exp, &exp);
    int has_nbf = date_claim(&c.nbf, &nbf);
    int has_iat = date_claim(&c.iat, &iat);
    int bad = has_exp < 0 || has_nbf < 0 || has_iat < 0;
    const jvalue *strs[] = {&c.iss, &c.sub, &c.client_id, &c.azp};
    for (size_t i = 0; i < SG_ARRAY_LEN(strs); i++)
        if (strs[i]->kind && strs[i]->kind != '"') bad = 1;
    if (c.aud.kind && c.aud.kind != '"') {
        if (c.aud.kind != '[') bad = 1;
        jwalk w;
        jvalue item;
        jwalk_begin(&w, c.aud.p, c.aud.p + c.aud.len);
        while (c.aud.kind == '[' && jwalk_next(&w, NULL, &item))
            if (item.kind != '"') bad = 1;
    }
    if (bad) return SG_TOKEN_CLAIM_TYPE;

    double t = (double)now, leeway = v->leeway_s;
    if (!has_exp && v->require_exp) return SG_TOKEN_EXP_MISSING;
    for (int i = 0; i < v->nrequired_claims; i++)
        if (!(c.required_seen & (uint32_t)1 << i)) return SG_TOKEN_CLAIM_MISSING;
    if (has_exp && t >= exp + leeway) return SG_TOKEN_EXPIRED;
    if (has_nbf && t + leeway < nbf) return SG_TOKEN_NOT_YET_VALID;
    if (has_iat && iat > t + leeway) return SG_TOKEN_IAT_FUTURE;
    const char *iss = c.iss.kind ? tok_keep_string(o, &c.iss) : NULL;
    if (v->issuer && (!iss || strcmp(iss, v->issuer) != 0)) return SG_TOKEN_WRONG_ISSUER;
    if (v->audience) {
        if (!c.aud.kind) return SG_TOKEN_AUD_MISSING;
        size_t mark = o->strings_used; /* audiences are compared, not kept */
        int match = 0;
        if (c.aud.kind == '"') {
            match = audience_matches(v, tok_keep_string(o, &c.aud));
        } else {
            jwalk w;
            jvalue item;
            jwalk_begin(&w, c.aud.p, c.aud.p + c.aud.len);
            while (!match && jwalk_next(&w, NULL, &item))
                match = audience_matches(v, tok_keep_string(o, &item));
        }
        o->strings_used = mark;
        if (!match) return SG_TOKEN_AUD_WRONG;
    }
    sg_token_err e = collect_scopes(o, &c);
    if (e) return e;

    o->pub.claims = NULL; /* built on demand: sg_token_claims */
    o->pub.claims_json = o->json;
    o->pub.claims_json_len = o->json_len;
    o->pub.sub = c.sub.kind ? tok_keep_string(o, &c.sub) : NULL;
    o->pub.client_id = c.client_id.kind ? tok_keep_string(o, &c.client_id)
                       : c.azp.kind     ? tok_keep_string(o, &c.azp)
                                        : NULL;
    o->pub.iss = iss;
    if (!has_exp || exp >= 9.2e18)
        o->pub.exp = INT64_MAX; /* no expiry: see docs/tokens.md */
    else
        o->pub.exp = exp <= -9.2e18 ? INT64_MIN : (int64_t)floor(exp);
    return SG_TOKEN_OK;
}
