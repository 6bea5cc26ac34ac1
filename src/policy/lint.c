/* lint.c -- findings with stable codes and the scope-design lint (see lint.h).
 *
 * The scope-design rules encode the usual mistakes of OAuth scope design for
 * MCP servers, each as a heuristic precise enough to be rarely wrong (the
 * exact rule of each code is in docs/policy.md, "Lint codes"). They work
 * only from the policy's introspection API (policy.h): the rules as written,
 * the scope universe with its `implies` closure, the declared scopes and
 * their lines, and the scopes a function rule's text names. */
#include "policy/lint.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "authz/scope.h"

/* ---- findings ------------------------------------------------------------------ */

static void add_finding(sg_findings *f, const char *file, int line, int is_error, const char *code,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void add_finding(sg_findings *f, const char *file, int line, int is_error, const char *code,
                        const char *fmt, ...)
{
    if (sg_array_reserve(&f->items, &f->cap, f->n, sizeof *f->items, 16) != 0) {
        f->oom = 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char small[1];
    int len = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    char *text = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (text) {
        va_start(ap, fmt);
        vsnprintf(text, (size_t)len + 1, fmt, ap);
        va_end(ap);
    }
    char *path = strdup(file);
    if (!text || !path) {
        free(text);
        free(path);
        f->oom = 1;
        return;
    }
    f->items[f->n++] = (sg_finding){path, line > 0 ? line : 1, is_error, code, text};
}

void sg_findings_free(sg_findings *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->items[i].file);
        free(f->items[i].message);
    }
    free(f->items);
    *f = (sg_findings)SG_FINDINGS_INIT;
}

size_t sg_findings_count(const sg_findings *f, int errors)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n; i++)
        n += !f->items[i].is_error == !errors;
    return n;
}

static int finding_order(const void *a, const void *b)
{
    const sg_finding *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    if (c) return c;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    if (x->is_error != y->is_error) return x->is_error ? -1 : 1;
    if ((c = strcmp(x->code, y->code)) != 0) return c;
    return strcmp(x->message, y->message);
}

void sg_findings_sort(sg_findings *f)
{
    if (f->n > 1) qsort(f->items, f->n, sizeof *f->items, finding_order);
}

/* Splits "file:12: error: msg" at its severity marker. Returns 1 and fills
 * the parts, or 0 when the line is not a finding. */
static int parse_report_line(const char *s, size_t len, size_t *file_len, int *line, int *is_error,
                             size_t *msg_off)
{
    static const char *const markers[] = {": error: ", ": warning: "};
    const char *best = NULL;
    int best_kind = 0;
    for (int k = 0; k < 2; k++) {
        const char *m = NULL;
        for (const char *p = s; p + strlen(markers[k]) <= s + len; p++)
            if (memcmp(p, markers[k], strlen(markers[k])) == 0) {
                m = p;
                break;
            }
        if (m && (!best || m < best)) {
            best = m;
            best_kind = k;
        }
    }
    if (!best) return 0;
    /* "file:12" before the marker */
    const char *d = best;
    while (d > s && isdigit((unsigned char)d[-1]))
        d--;
    if (d == best || d == s || d[-1] != ':') return 0;
    *file_len = (size_t)(d - 1 - s);
    *line = atoi(d);
    *is_error = best_kind == 0;
    *msg_off = (size_t)(best - s) + strlen(markers[best_kind]);
    return 1;
}

void sg_findings_parse_report(sg_findings *out, const char *report)
{
    const char *s = report ? report : "";
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        size_t file_len, msg_off;
        int line, is_error;
        if (parse_report_line(s, len, &file_len, &line, &is_error, &msg_off)) {
            char *msg = strndup(s + msg_off, len - msg_off);
            char *file = strndup(s, file_len);
            const char *code = is_error ? "policy-error"
                               : msg && strstr(msg, "is not declared in `scopes`")
                                   ? "scope-undeclared"
                                   : "policy-warning";
            if (!msg || !file)
                out->oom = 1;
            else
                add_finding(out, file, line, is_error, code, "%s", msg);
            free(msg);
            free(file);
        } else if (out->n > 0 && len > 0) {
            sg_finding *last = &out->items[out->n - 1];
            size_t old = strlen(last->message);
            char *m = realloc(last->message, old + 1 + len + 1);
            if (!m) {
                out->oom = 1;
            } else {
                m[old] = '\n';
                memcpy(m + old + 1, s, len);
                m[old + 1 + len] = '\0';
                last->message = m;
            }
        }
        s += len + (nl ? 1 : 0);
    }
}

void sg_findings_format_text(const sg_findings *f, sg_buf *out)
{
    for (size_t i = 0; i < f->n; i++) {
        const sg_finding *x = &f->items[i];
        if (x->is_error)
            sg_buf_printf(out, "%s:%d: error: %s\n", x->file, x->line, x->message);
        else
            sg_buf_printf(out, "%s:%d: warning: %s [%s]\n", x->file, x->line, x->message, x->code);
    }
}

char *sg_findings_to_json(const char *path, const sg_findings *f)
{
    cJSON *doc = cJSON_CreateObject();
    int ok = doc && cJSON_AddStringToObject(doc, "file", path) &&
             cJSON_AddNumberToObject(doc, "errors", (double)sg_findings_count(f, 1)) &&
             cJSON_AddNumberToObject(doc, "warnings", (double)sg_findings_count(f, 0));
    cJSON *list = ok ? cJSON_AddArrayToObject(doc, "findings") : NULL;
    ok = list != NULL;
    for (size_t i = 0; ok && i < f->n; i++) {
        const sg_finding *x = &f->items[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddItemToArray(list, o); /* owned by the document from here on */
        ok = cJSON_AddStringToObject(o, "file", x->file) &&
             cJSON_AddNumberToObject(o, "line", x->line) &&
             cJSON_AddStringToObject(o, "severity", x->is_error ? "error" : "warning") &&
             cJSON_AddStringToObject(o, "code", x->code) &&
             cJSON_AddStringToObject(o, "message", x->message);
    }
    char *text = ok && cJSON_GetArraySize(list) == (int)f->n ? cJSON_Print(doc) : NULL;
    cJSON_Delete(doc);
    return text;
}

/* ---- check ------------------------------------------------------------------------ */

/* The text of line `line` (1-based) of src, or NULL. */
static const char *line_text(const char *src, int line, size_t *len)
{
    const char *s = src;
    for (int n = 1; n < line; n++) {
        s = strchr(s, '\n');
        if (!s) return NULL;
        s++;
    }
    const char *nl = strchr(s, '\n');
    *len = nl ? (size_t)(nl - s) : strlen(s);
    return s;
}

/* 1 when the line says "scopegate-lint: ignore" followed by code among its
 * words (separated by spaces or commas). */
static int line_ignores(const char *s, size_t len, const char *code)
{
    static const char marker[] = "scopegate-lint: ignore";
    size_t mlen = sizeof marker - 1, clen = strlen(code);
    for (size_t i = 0; i + mlen <= len; i++) {
        if (memcmp(s + i, marker, mlen) != 0) continue;
        for (size_t j = i + mlen; j < len;) {
            while (j < len && (s[j] == ' ' || s[j] == ',' || s[j] == '\t'))
                j++;
            size_t k = j;
            while (k < len && s[k] != ' ' && s[k] != ',' && s[k] != '\t')
                k++;
            if (k - j == clen && memcmp(s + j, code, clen) == 0) return 1;
            j = k;
        }
    }
    return 0;
}

/* Drops the warnings that a "-- scopegate-lint: ignore CODE" comment on
 * their line, or on the line above, waives. Errors are never waived. */
static void drop_ignored(sg_findings *f)
{
    char *src = NULL, *src_file = NULL; /* the file last read, and its name */
    size_t kept = 0;
    for (size_t i = 0; i < f->n; i++) {
        sg_finding *x = &f->items[i];
        int ignored = 0;
        if (!x->is_error) {
            if (!src_file || strcmp(src_file, x->file) != 0) {
                free(src);
                free(src_file);
                src = sg_read_file(x->file, SG_SANDBOX_MAX_SOURCE, NULL);
                src_file = strdup(x->file);
            }
            for (int l = x->line; src && !ignored && l >= x->line - 1 && l >= 1; l--) {
                size_t len;
                const char *t = line_text(src, l, &len);
                ignored = t && line_ignores(t, len, x->code);
            }
        }
        if (ignored) {
            free(x->file);
            free(x->message);
            continue;
        }
        f->items[kept++] = *x;
    }
    f->n = kept;
    free(src);
    free(src_file);
}

static void run_scope_design(sg_policy *p, void *ctx)
{
    sg_lint_scope_design(p, ctx);
}

int sg_check_policy(const char *path, const sg_policy_limits *limits, sg_findings *out)
{
    sg_buf report = SG_BUF_INIT;
    sg_findings design = SG_FINDINGS_INIT;
    int errors = sg_policy_check_with(path, limits, &report, run_scope_design, &design, NULL);
    if (!sg_buf_ok(&report)) out->oom = 1;
    sg_findings_parse_report(out, report.data);
    sg_buf_free(&report);
    for (size_t i = 0; i < design.n; i++) {
        const sg_finding *x = &design.items[i];
        add_finding(out, x->file, x->line, x->is_error, x->code, "%s", x->message);
    }
    if (design.oom) out->oom = 1;
    sg_findings_free(&design);
    sg_findings_sort(out);
    drop_ignored(out);
    return errors + (out->oom ? 1 : 0);
}

/* ---- words and segments ------------------------------------------------------------ */

/* Next run of characters of s (from *pos) that are not in seps; its start
 * and length. Returns 0 at the end. */
static int next_segment(const char *s, size_t *pos, const char *seps, size_t *start, size_t *len)
{
    size_t i = *pos;
    while (s[i] && strchr(seps, s[i]))
        i++;
    if (!s[i]) return 0;
    *start = i;
    while (s[i] && !strchr(seps, s[i]))
        i++;
    *len = i - *start;
    *pos = i;
    return 1;
}

static int word_is(const char *s, size_t len, const char *const *words, size_t nwords)
{
    for (size_t k = 0; k < nwords; k++)
        if (strlen(words[k]) == len && strncasecmp(s, words[k], len) == 0) return (int)k;
    return -1;
}

/* The last segment of a scope name, split on ':' '.' '/'. */
static const char *last_segment(const char *scope)
{
    const char *last = scope;
    for (const char *c = scope; *c; c++)
        if (*c == ':' || *c == '.' || *c == '/') last = c + 1;
    return last;
}

/* Lower-case letters and digits only: "delete-Entry" -> "deleteentry". */
static void squash(const char *s, char *out, size_t size)
{
    size_t n = 0;
    for (; *s && n + 1 < size; s++)
        if (isalnum((unsigned char)*s)) out[n++] = (char)tolower((unsigned char)*s);
    out[n] = '\0';
}

/* ---- the scope-design lint --------------------------------------------------------- */

typedef struct lint_rule {
    sg_policy_rule_info info;
    sg_scopeset scopes; /* what it can require (static leaves or the function's text) */
    int scopes_known;   /* 0 for a function rule whose text could not be read */
} lint_rule;

typedef struct lint {
    sg_policy *p;
    const sg_universe *u;
    const char *path;
    sg_findings *out;
    lint_rule *rules;
    size_t nrules, cap;
    int oom;
} lint;

static void req_scopes(const sg_req *r, sg_scopeset *out)
{
    if (r->kind == SG_REQ_SCOPE) sg_scopeset_add(out, r->scope);
    if (r->kind == SG_REQ_ALL || r->kind == SG_REQ_ANY)
        for (int i = 0; i < r->nkids; i++)
            req_scopes(r->kids[i], out);
}

static void collect_rule(const sg_policy_rule_info *info, void *ctx)
{
    lint *l = ctx;
    if (sg_array_reserve(&l->rules, &l->cap, l->nrules, sizeof *l->rules, 32) != 0) {
        l->oom = 1;
        return;
    }
    lint_rule *r = &l->rules[l->nrules++];
    memset(r, 0, sizeof *r);
    r->info = *info;
    r->scopes_known = 1;
    if (info->req)
        req_scopes(info->req, &r->scopes);
    else
        r->scopes_known = sg_policy_rule_scopes(l->p, info->name, &r->scopes) == 0;
}

static int rule_order(const void *a, const void *b)
{
    const lint_rule *x = a, *y = b;
    if (x->info.line != y->info.line) return x->info.line < y->info.line ? -1 : 1;
    return strcmp(x->info.name, y->info.name);
}

static int is_tool(const lint_rule *r)
{
    return strcmp(r->info.table, "tools") == 0;
}

/* Where a finding about scope id goes: its line in `scopes` ("scopes: ..."),
 * else the first rule (by line) that requires it, else `advertise`, else 1. */
static int scope_where(const lint *l, int id, const char **where)
{
    int line;
    if (sg_policy_scope_declared(l->p, id, &line)) {
        *where = "scopes";
        return line;
    }
    for (size_t i = 0; i < l->nrules; i++)
        if (sg_scopeset_has(&l->rules[i].scopes, id)) {
            *where = l->rules[i].info.name;
            return l->rules[i].info.line;
        }
    *where = "advertise";
    return sg_policy_advertise_line(l->p);
}

#define WARN(l, line, code, ...) add_finding((l)->out, (l)->path, (line), 0, (code), __VA_ARGS__)

/* scope-per-tool: the scope's last segment contains the name of the one
 * tool that requires it. */
static void lint_per_tool(lint *l)
{
    static const char *const verbs[] = {"read", "write", "admin", "full", "all"};
    int n = sg_universe_size(l->u);
    for (int id = 0; id < n; id++) {
        const lint_rule *tool = NULL;
        int ntools = 0;
        for (size_t i = 0; i < l->nrules; i++)
            if (is_tool(&l->rules[i]) && sg_scopeset_has(&l->rules[i].scopes, id)) {
                tool = &l->rules[i];
                ntools++;
            }
        if (ntools != 1) continue;
        const char *name = sg_universe_name(l->u, id);
        const char *seg = last_segment(name);
        if (word_is(seg, strlen(seg), verbs, SG_ARRAY_LEN(verbs)) >= 0) continue;
        char sseg[SG_MAX_SCOPE_LEN + 1], stool[SG_MAX_SCOPE_LEN + 1];
        squash(seg, sseg, sizeof sseg);
        squash(tool->info.key, stool, sizeof stool);
        if (strlen(stool) < 4 || !strstr(sseg, stool)) continue;
        const char *where;
        int line = scope_where(l, id, &where);
        WARN(l, line, "scope-per-tool",
             "%s: scope \"%s\" is named after tool %s, the only tool it guards (tools are "
             "renamed and multiply, scopes must stay stable: name the resource and the access "
             "level instead, e.g. <prefix>:<resource>:write)",
             where, name, tool->info.key);
    }
}

/* scope-env-word: a segment (split on : . _ - /) names an environment. */
static void lint_env_words(lint *l)
{
    static const char *const words[] = {"prod",        "production", "staging", "dev",
                                        "development", "test",       "testing"};
    int n = sg_universe_size(l->u);
    for (int id = 0; id < n; id++) {
        const char *name = sg_universe_name(l->u, id);
        size_t pos = 0, start, len;
        while (next_segment(name, &pos, ":._-/", &start, &len)) {
            int k = word_is(name + start, len, words, SG_ARRAY_LEN(words));
            if (k < 0) continue;
            const char *where;
            int line = scope_where(l, id, &where);
            WARN(l, line, "scope-env-word",
                 "%s: scope \"%s\" names an environment (\"%.*s\"): promoting a deployment "
                 "would change its scopes and every token and client configuration with them; "
                 "use the same scope everywhere and let the token audience (`resource`) tell "
                 "deployments apart",
                 where, name, (int)len, name + start);
            break;
        }
    }
}

/* scope-oidc: a rule requires an OpenID Connect scope. */
static int is_oidc_scope(const char *name)
{
    static const char *const exact[] = {"openid",  "profile", "email",
                                        "address", "phone",   "offline_access"};
    static const char *const last[] = {"openid", "offline_access"};
    const char *seg = last_segment(name);
    return word_is(name, strlen(name), exact, SG_ARRAY_LEN(exact)) >= 0 ||
           word_is(seg, strlen(seg), last, SG_ARRAY_LEN(last)) >= 0;
}

static void lint_oidc(lint *l)
{
    int n = sg_universe_size(l->u);
    for (size_t i = 0; i < l->nrules; i++) {
        const lint_rule *r = &l->rules[i];
        for (int id = 0; id < n; id++) {
            if (!sg_scopeset_has(&r->scopes, id) || !is_oidc_scope(sg_universe_name(l->u, id)))
                continue;
            WARN(l, r->info.line, "scope-oidc",
                 "%s: requires the OpenID Connect scope \"%s\", which asks the authorization "
                 "server for identity claims or refresh tokens, not for access to this server; "
                 "require a scope of your own (e.g. <prefix>:<resource>:read)",
                 r->info.name, sg_universe_name(l->u, id));
        }
    }
}

/* scope-write-without-read: "P<sep>write" and "P<sep>read" both exist and
 * write does not imply read (transitively). */
static void lint_write_read(lint *l)
{
    int n = sg_universe_size(l->u);
    for (int id = 0; id < n; id++) {
        const char *name = sg_universe_name(l->u, id);
        size_t len = strlen(name);
        if (len < 5 || strcmp(name + len - 5, "write") != 0) continue;
        size_t plen = len - 5;
        if (plen > 0 && !strchr(":._-/", name[plen - 1])) continue;
        char read[SG_MAX_SCOPE_LEN + 1];
        snprintf(read, sizeof read, "%.*sread", (int)plen, name);
        int rid = sg_universe_find(l->u, read, strlen(read));
        if (rid < 0) continue;
        sg_scopeset w, closure;
        sg_scopeset_clear(&w);
        sg_scopeset_add(&w, id);
        sg_universe_effective(l->u, &w, &closure);
        if (sg_scopeset_has(&closure, rid)) continue;
        const char *where;
        int line = scope_where(l, id, &where);
        WARN(l, line, "scope-write-without-read",
             "%s: scope \"%s\" does not imply \"%s\": a client granted write alone is refused "
             "when it reads what it writes; add implies = { [\"%s\"] = { \"%s\" } } (or require "
             "both where a tool needs both)",
             where, name, read, name, read);
    }
}

/* scope-unused: declared, and neither it nor anything it implies is required
 * by any rule. Skipped when some function rule's scopes are unknown. */
static void lint_unused(lint *l)
{
    sg_scopeset required;
    sg_scopeset_clear(&required);
    for (size_t i = 0; i < l->nrules; i++) {
        if (!l->rules[i].scopes_known) return;
        sg_scopeset_union(&required, &l->rules[i].scopes);
    }
    int n = sg_universe_size(l->u);
    for (int id = 0; id < n; id++) {
        int line;
        if (!sg_policy_scope_declared(l->p, id, &line)) continue;
        sg_scopeset one, closure;
        sg_scopeset_clear(&one);
        sg_scopeset_add(&one, id);
        sg_universe_effective(l->u, &one, &closure);
        int used = 0;
        for (size_t w = 0; w < SG_ARRAY_LEN(closure.w); w++)
            used |= (closure.w[w] & required.w[w]) != 0;
        if (used) continue;
        WARN(l, line, "scope-unused",
             "scopes: scope \"%s\" is declared but no rule requires it or a scope it implies "
             "(clients may ask for it and users consent to it for nothing); remove it, or "
             "require it where it applies",
             sg_universe_name(l->u, id));
    }
}

/* scope-not-advertised: with `advertise` set, a `methods` rule for protocol
 * plumbing needs a scope that the advertised scopes do not grant. */
static int is_plumbing(const char *method)
{
    static const char *const plumbing[] = {
        "initialize",   "ping",           "server/discover",         "tools/list",
        "prompts/list", "resources/list", "resources/templates/list"};
    return strncmp(method, "notifications/", 14) == 0 ||
           word_is(method, strlen(method), plumbing, SG_ARRAY_LEN(plumbing)) >= 0;
}

static void lint_not_advertised(lint *l)
{
    if (sg_policy_advertise_line(l->p) == 0) return;
    const char *const *names;
    int nadv = sg_policy_scopes_supported(l->p, &names);
    sg_scopeset adv, granted;
    sg_scopeset_clear(&adv);
    for (int i = 0; i < nadv; i++) {
        int id = sg_universe_find(l->u, names[i], strlen(names[i]));
        if (id >= 0) sg_scopeset_add(&adv, id);
    }
    sg_universe_effective(l->u, &adv, &granted);
    for (size_t i = 0; i < l->nrules; i++) {
        const lint_rule *r = &l->rules[i];
        if (strcmp(r->info.table, "methods") != 0 || !r->info.req || !is_plumbing(r->info.key))
            continue;
        if (sg_req_satisfied(r->info.req, 1, &granted) || !sg_req_satisfiable(r->info.req))
            continue;
        sg_scopeset add;
        sg_scopeset_clear(&add);
        sg_buf missing = SG_BUF_INIT;
        if (sg_req_stepup(l->u, r->info.req, &granted, &add) == 0)
            sg_universe_format(l->u, &add, &missing);
        WARN(l, r->info.line, "scope-not-advertised",
             "%s: %s is protocol plumbing, but the advertised scopes do not grant what it "
             "requires (missing: %s): a client that authorizes for scopes_supported must step "
             "up before its very first request; add the scope to "
             "`advertise` (or have an advertised scope imply it)",
             r->info.name, r->info.key, missing.data ? missing.data : "?");
        sg_buf_free(&missing);
    }
}

/* public-write-tool: anonymous callers may call a tool whose name says it
 * changes something. */
static void lint_public_write(lint *l)
{
    static const char *const verbs[] = {"delete",  "remove", "create", "update", "edit",
                                        "modify",  "write",  "send",   "insert", "upload",
                                        "publish", "purge",  "drop"};
    sg_scopeset none;
    sg_scopeset_clear(&none);
    for (size_t i = 0; i < l->nrules; i++) {
        const lint_rule *r = &l->rules[i];
        if (!is_tool(r) || !r->info.req || !sg_req_satisfied(r->info.req, 0, &none)) continue;
        /* Words: split on separators and at lower-to-upper case changes. */
        const char *k = r->info.key;
        size_t i0 = 0, n = strlen(k);
        for (size_t j = 0; j <= n; j++) {
            int boundary =
                j == n || !isalnum((unsigned char)k[j]) ||
                (j > i0 && isupper((unsigned char)k[j]) && islower((unsigned char)k[j - 1]));
            if (!boundary) continue;
            int v = j > i0 ? word_is(k + i0, j - i0, verbs, SG_ARRAY_LEN(verbs)) : -1;
            if (v >= 0) {
                WARN(l, r->info.line, "public-write-tool",
                     "%s: anonymous callers may call it, but its name says it changes things "
                     "(\"%s\"): public tools leave no trace of who called them; require a "
                     "write scope",
                     r->info.name, verbs[v]);
                break;
            }
            i0 = (j < n && isalnum((unsigned char)k[j])) ? j : j + 1;
        }
    }
}

/* default-public: whatever the policy does not name is open to anyone. */
static void lint_default_public(lint *l)
{
    sg_scopeset none;
    sg_scopeset_clear(&none);
    for (size_t i = 0; i < l->nrules; i++) {
        const lint_rule *r = &l->rules[i];
        if (strcmp(r->info.table, "default") != 0 || !r->info.req ||
            !sg_req_satisfied(r->info.req, 0, &none))
            continue;
        WARN(l, r->info.line, "default-public",
             "default: every tool, prompt, resource and method the policy does not name is open "
             "to anonymous callers, including ones the server adds later; make the default "
             "\"deny\" (or a scope) and name the public items");
    }
}

void sg_lint_scope_design(sg_policy *p, sg_findings *out)
{
    lint l = {p, sg_policy_universe(p), sg_policy_path(p), out, NULL, 0, 0, 0};
    sg_policy_each_rule(p, collect_rule, &l);
    if (l.oom) {
        out->oom = 1;
        free(l.rules);
        return;
    }
    /* Hash-table order is not stable: order rules by line for "first rule". */
    if (l.nrules > 1) qsort(l.rules, l.nrules, sizeof *l.rules, rule_order);
    lint_per_tool(&l);
    lint_env_words(&l);
    lint_oidc(&l);
    lint_write_read(&l);
    lint_unused(&l);
    lint_not_advertised(&l);
    lint_public_write(&l);
    lint_default_public(&l);
    free(l.rules);
}
