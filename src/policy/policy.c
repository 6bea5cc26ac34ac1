/* policy.c -- the policy object (see policy.h): its rule tables, its
 * lifetime, its hash and the read-only views the gateway and lint use.
 *
 * The split that keeps the hot path cheap: everything a policy says
 * statically is compiled once, at load (load.c, rules.c, compile.c), into
 * sg_req trees held in hash tables keyed by name, so deciding a static rule
 * (decide.c) is a hash lookup whatever the policy's size and never touches
 * Lua. Only rules written as functions enter the Lua state per request,
 * under the sandbox budgets, with a fresh `req` table each time. */
#include "policy/policy_impl.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

rule *policy_map_get(const rule_map *m, const char *key, size_t len)
{
    if (!m->cap) return NULL;
    size_t i = sg_fnv1a(key, len) & (m->cap - 1);
    for (rule *r; (r = m->slots[i]) != NULL; i = (i + 1) & (m->cap - 1))
        if (r->keylen == len && memcmp(r->key, key, len) == 0) return r;
    return NULL;
}

int policy_map_put(rule_map *m, rule *r)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        rule **slots = calloc(cap, sizeof *slots);
        if (!slots) return -1;
        for (size_t k = 0; k < m->cap; k++) {
            rule *o = m->slots[k];
            if (!o) continue;
            size_t i = sg_fnv1a(o->key, o->keylen) & (cap - 1);
            while (slots[i])
                i = (i + 1) & (cap - 1);
            slots[i] = o;
        }
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    size_t i = sg_fnv1a(r->key, r->keylen) & (m->cap - 1);
    while (m->slots[i])
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = r;
    m->count++;
    return 0;
}

const char *const policy_table_names[T_COUNT] = {"tools", "prompts", "resources", "methods"};

void sg_policy_sources_hash(const sg_sandbox *sb, char out[SG_POLICY_HASH_LEN + 1])
{
    const sg_sandbox_source *src;
    int n = sg_sandbox_sources(sb, &src);
    unsigned char all[32];
    sg_buf digests = SG_BUF_INIT;
    for (int i = 0; i < n; i++)
        sg_buf_append(&digests, src[i].sha256, sizeof src[i].sha256);
    sg_sha256(digests.data ? digests.data : "", digests.len, all);
    sg_buf_free(&digests);
    sg_hex(all, SG_POLICY_HASH_LEN / 2, out);
}

int sg_policy_annotations_from_upstream(const sg_policy *p)
{
    return p->annotations_from_upstream;
}

const char *sg_policy_hash(const sg_policy *p)
{
    return p->hash;
}

void sg_policy_free(sg_policy *p)
{
    if (!p) return;
    sg_sandbox_free(p->sb);
    sg_universe_free(p->u);
    for (int w = 0; w < T_COUNT; w++)
        free(p->maps[w].slots);
    free(p->globs);
    free(p->functions);
    sg_arena_free(&p->arena);
    free(p->path);
    free(p);
}

/* "file:12: rest" -> length of "file:12", or 0 when msg has no location. */
size_t policy_location_prefix(const char *msg)
{
    for (const char *c = strchr(msg, ':'); c; c = strchr(c + 1, ':')) {
        const char *d = c + 1;
        if (!isdigit((unsigned char)*d)) continue;
        while (isdigit((unsigned char)*d))
            d++;
        if (d[0] == ':' && d[1] == ' ' && !memchr(msg, '\n', (size_t)(c - msg)))
            return (size_t)(d - msg);
    }
    return 0;
}

/* ---- introspection ----------------------------------------------------------------- */

const char *sg_policy_path(const sg_policy *p)
{
    return p->path;
}

const char *sg_policy_realm(const sg_policy *p)
{
    return p->realm;
}

const char *sg_policy_resource(const sg_policy *p)
{
    return p->resource;
}

int sg_policy_authorization_servers(const sg_policy *p, const char *const **out)
{
    *out = p->auth_servers;
    return p->nauth_servers;
}

const sg_universe *sg_policy_universe(const sg_policy *p)
{
    return p->u;
}

int sg_policy_scopes_supported(const sg_policy *p, const char *const **out)
{
    *out = p->supported;
    return p->nsupported;
}

const sg_req *sg_policy_tool_requirement(const sg_policy *p, const char *name, int *dynamic)
{
    const rule *r = policy_map_get(&p->maps[T_TOOLS], name, strlen(name));
    if (dynamic) *dynamic = r && !r->req;
    return r ? r->req : NULL;
}

int sg_policy_has_public_rule(const sg_policy *p)
{
    return p->any_public;
}

int sg_policy_function_scopes(const sg_policy *p, const sg_policy_scope_use **out)
{
    *out = p->fscopes;
    return p->nfscopes;
}

sg_sandbox *sg_policy_sandbox(sg_policy *p)
{
    return p->sb;
}

/* ---- introspection for linters ----------------------------------------------------- */

void sg_policy_each_rule(const sg_policy *p,
                         void (*visit)(const sg_policy_rule_info *rule, void *ctx), void *ctx)
{
    for (int w = 0; w < T_COUNT; w++) {
        const rule_map *m = &p->maps[w];
        for (size_t i = 0; i < m->cap; i++) {
            const rule *r = m->slots[i];
            if (!r) continue;
            sg_policy_rule_info info = {.table = policy_table_names[w],
                                        .key = r->key,
                                        .name = r->name,
                                        .line = r->line,
                                        .req = r->req};
            visit(&info, ctx);
        }
    }
    for (size_t i = 0; i < p->nglobs; i++) {
        const rule *r = p->globs[i];
        sg_policy_rule_info info = {
            .table = "resources", .key = r->key, .name = r->name, .line = r->line, .req = r->req};
        visit(&info, ctx);
    }
    /* An absent default has line 0; a written one has its key's line. */
    if (p->default_rule.line > 0) {
        const rule *r = &p->default_rule;
        sg_policy_rule_info info = {
            .table = "default", .key = r->key, .name = r->name, .line = r->line, .req = r->req};
        visit(&info, ctx);
    }
}

int sg_policy_scope_declared(const sg_policy *p, int id, int *line)
{
    int declared = id >= 0 && id < SG_MAX_SCOPES && sg_scopeset_has(&p->declared, id);
    if (line) *line = declared && id < p->ndeclared_lines ? p->declared_lines[id] : 0;
    return declared;
}

int sg_policy_advertise_line(const sg_policy *p)
{
    return p->advertise_line;
}

static const rule *find_function_rule(const sg_policy *p, const char *name)
{
    for (int i = 0; i < p->nfunctions; i++)
        if (strcmp(p->functions[i]->name, name) == 0) return p->functions[i];
    return NULL;
}

int sg_policy_rule_scopes(const sg_policy *p, const char *name, sg_scopeset *out)
{
    if (!find_function_rule(p, name)) return -1;
    const sg_policy_scope_use *uses;
    int n = sg_policy_function_scopes(p, &uses);
    for (int i = 0; i < n; i++) {
        if (strcmp(uses[i].rule, name) != 0) continue;
        int id = sg_universe_find(p->u, uses[i].scope, strlen(uses[i].scope));
        if (id >= 0) sg_scopeset_add(out, id);
    }
    return 0;
}
