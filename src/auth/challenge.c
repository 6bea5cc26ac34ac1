/* challenge.c -- decisions and their WWW-Authenticate challenges.
 *
 * See challenge.h. The rules, in order:
 *   1. A refused token is 401 invalid_token, whatever the requirement.
 *   2. A satisfied requirement is allowed (public needs no token at all).
 *   3. No token: 401 naming the cheapest scopes this message needs.
 *   4. Valid token, not enough scope: 403 insufficient_scope naming the
 *      scopes already granted plus the cheapest set to add (RFC 6750 and the
 *      MCP authorization spec, 2025-11-25 and 2026-07-28 alike).
 *   5. A requirement no scope can satisfy: 403 without a challenge, since a
 *      step-up cannot help and a hint would send the client round in circles. */
#include "auth/challenge.h"

#include <string.h>

#define VALUE_MAX 512

/* 1 for the bytes a quoted parameter keeps as they are: printable ASCII
 * but the quote and the backslash. */
static int plain_byte(unsigned char c)
{
    return c >= 0x20 && c <= 0x7E && c != '"' && c != '\\';
}

/* , name="value": the value cut at VALUE_MAX bytes, a quote written as ',
 * a backslash as / and any other byte a quoted-string may not hold as ?,
 * so the header can never be split or its quoting escaped. Plain runs are
 * appended whole: a denied request formats five of these. */
static void put_param(sg_buf *out, int *first, const char *name, const char *value)
{
    if (!value || !*value) return;
    sg_buf_puts(out, *first ? " " : ", ");
    *first = 0;
    sg_buf_puts(out, name);
    sg_buf_puts(out, "=\"");
    const unsigned char *p = (const unsigned char *)value;
    size_t left = strnlen(value, VALUE_MAX);
    while (left > 0) {
        size_t run = 0;
        while (run < left && plain_byte(p[run]))
            run++;
        sg_buf_append(out, p, run);
        if (run == left) break;
        unsigned char c = p[run];
        sg_buf_putc(out, c == '"' ? '\'' : c == '\\' ? '/' : '?');
        p += run + 1;
        left -= run + 1;
    }
    sg_buf_putc(out, '"');
}

static int scope_list_valid(const char *s)
{
    if (!s || !*s) return 0;
    while (*s) {
        const char *end = strchr(s, ' ');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (!sg_scope_token_valid(s, len)) return 0;
        if (!end) break;
        s = end + 1;
    }
    return 1;
}

void sg_challenge_format(const sg_challenge *c, sg_buf *out)
{
    int first = 1;
    sg_buf_puts(out, "Bearer");
    put_param(out, &first, "realm", c->realm);
    put_param(out, &first, "error", c->error);
    if (scope_list_valid(c->scope)) put_param(out, &first, "scope", c->scope);
    put_param(out, &first, "resource_metadata", c->resource_metadata);
    put_param(out, &first, "error_description", c->error_description);
}

void sg_token_granted(const sg_universe *u, const sg_token *token, sg_scopeset *out)
{
    sg_scopeset_clear(out);
    if (!token) return;
    for (int i = 0; i < token->nscopes; i++) {
        int id = sg_universe_find(u, token->scopes[i], strlen(token->scopes[i]));
        if (id >= 0) sg_scopeset_add(out, id);
    }
}

void sg_decision_init(sg_decision *d)
{
    memset(d, 0, sizeof *d);
}

void sg_decision_free(sg_decision *d)
{
    sg_buf_free(&d->challenge);
    sg_buf_free(&d->message);
}

/* Fills d->challenge for a 401/403 whose scope= is d->scope. offline_access
 * is never asked for in a challenge (MCP 2026-07-28): refresh tokens are the
 * authorization server's business, not a step-up. */
static void challenge(const sg_site *site, sg_decision *d, const char *error, const char *desc)
{
    int offline = sg_universe_find(site->universe, "offline_access", 14);
    if (offline >= 0) d->scope.w[offline >> 6] &= ~((uint64_t)1 << (offline & 63));
    sg_buf scope = SG_BUF_INIT;
    sg_universe_format(site->universe, &d->scope, &scope);
    sg_challenge c = {.realm = site->realm,
                      .error = error,
                      .scope = scope.data,
                      .resource_metadata = site->resource_metadata,
                      .error_description = desc};
    sg_challenge_format(&c, &d->challenge);
    sg_buf_free(&scope);
}

void sg_decide(const sg_site *site, const sg_req *req, const sg_token *token,
               const char *token_error, sg_decision *d)
{
    const sg_universe *u = site->universe;
    sg_scopeset granted, effective, add;
    sg_buf_reset(&d->challenge);
    sg_buf_reset(&d->message);
    sg_scopeset_clear(&d->scope);
    sg_token_granted(u, token, &granted);
    sg_universe_effective(u, &granted, &effective);

    /* Described only when refused: an allowed request pays for no text. */
    sg_buf desc = SG_BUF_INIT;
    if (!token_error && !sg_req_satisfiable(req)) {
        d->outcome = SG_DENIED;
        d->status = 403;
        sg_req_describe(u, req, &d->message);
    } else if (token_error || (!token && !sg_req_satisfied(req, 0, &effective))) {
        d->outcome = SG_UNAUTHORIZED;
        d->status = 401;
        sg_scopeset empty;
        sg_scopeset_clear(&empty);
        if (sg_req_stepup(u, req, &empty, &add) == 0) d->scope = add;
        sg_req_describe(u, req, &desc);
        const char *what = desc.data ? desc.data : "";
        if (token_error) {
            size_t n = strlen(token_error);
            sg_buf_printf(&d->message, "Invalid access token: %s%s %s", token_error,
                          n && token_error[n - 1] == '.' ? "" : ".", what);
            challenge(site, d, "invalid_token", token_error);
        } else {
            sg_buf_printf(&d->message, "Authorization required. %s", what);
            challenge(site, d, NULL, NULL);
        }
    } else if (sg_req_satisfied(req, token != NULL, &effective)) {
        d->outcome = SG_ALLOW;
        d->status = 200;
    } else {
        /* Satisfiable, so a step-up set exists. The description names
         * only what is missing: scopes held (directly or through implies)
         * are not news to the caller. */
        sg_req_stepup(u, req, &effective, &add);
        d->outcome = SG_FORBIDDEN;
        d->status = 403;
        d->scope = granted;
        sg_scopeset_union(&d->scope, &add);
        sg_req_describe_missing(u, req, &effective, &desc);
        const char *lacks = desc.data ? desc.data : "";
        sg_buf_puts(&d->message, lacks);
        challenge(site, d, "insufficient_scope", lacks);
    }
    sg_buf_free(&desc);
}
