/* fnscopes.c -- the scopes function rules name in their source text
 * (sg_policy_function_scopes), found at load by a rough tokenizer (see
 * below). Its own file because it reads source, not values: it never runs
 * the function, and everything it finds is a hint for lint and metadata. */
#include "policy/policy_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

/* ---- scopes a function rule can return -----------------------------------------
 *
 * A function rule's requirement is known only when it runs, and `check`
 * runs it once, in one phase: a misspelt scope in a branch taken only in
 * the call phase would pass. So the function's source text (its span,
 * lines linedefined..lastlinedefined, in the policy or in a module) is
 * scanned with a rough Lua tokenizer for string constants. A constant is
 * "returned" when it sits in a return expression (up to the end, else,
 * elseif or until that closes the return's block) and is not an operand of
 * a comparison or of `..`, not an index ([...]) or call argument, and not
 * the text of `why =` or `deny =`. Constants that merely equal a scope the
 * policy knows are kept too (`local need = "a:admin"`). Heuristic by
 * nature: it can miss a scope built at run time, and it never executes
 * anything. */

static void add_fconst(loader *ld, const char *src, const sg_luasrc_token *t, const rule *r,
                       const char *file, int returned)
{
    if (ld->nfconsts == ld->fconsts_cap) {
        size_t cap = ld->fconsts_cap ? ld->fconsts_cap * 2 : 32;
        struct fconst *f = realloc(ld->fconsts, cap * sizeof *f);
        if (!f) luaL_error(ld->L, "out of memory");
        ld->fconsts = f;
        ld->fconsts_cap = cap;
    }
    ld->fconsts[ld->nfconsts++] =
        (struct fconst){policy_arena_copy(ld, &ld->p->arena, src + t->off, t->len),
                        r->name,
                        file,
                        t->len,
                        t->line,
                        returned};
}

/* Collects the string constants of the function rule r, written in file
 * (the policy or a module) at lines first..last. */
void policy_scan_function(loader *ld, const rule *r, const char *file, int first, int last)
{
    const char *src;
    size_t len;
    if (strcmp(file, ld->p->path) == 0) {
        src = ld->idx.src;
        len = ld->idx.len;
    } else {
        if (!ld->module_path || strcmp(ld->module_path, file) != 0) {
            free(ld->module_path);
            free(ld->module_src);
            ld->module_path = strdup(file);
            ld->module_src = sg_read_file(file, SG_SANDBOX_MAX_SOURCE, &ld->module_len);
        }
        src = ld->module_src;
        len = ld->module_len;
    }
    if (!src || first < 1 || last < first) return;
    size_t from = 0, to = len;
    int line = 1;
    for (size_t i = 0; i < len && line < first; i++)
        if (src[i] == '\n' && ++line == first) from = i + 1;
    for (size_t i = from; i < len; i++)
        if (src[i] == '\n' && ++line > last) {
            to = i;
            break;
        }
    const char *path = policy_arena_copy(ld, &ld->p->arena, file, strlen(file));
    sg_luasrc_token *t = NULL;
    size_t n = sg_luasrc_tokens(src, from, to, first, &t);
    /* Bracket kinds since the function's start: '(' grouping, 'c' call
     * parentheses, '[' index, '{' table. */
    char stack[256];
    int depth = 0, ret_depth = -1;
    for (size_t i = 0; i < n; i++) {
        const sg_luasrc_token *k = &t[i], *prev = i ? &t[i - 1] : NULL,
                              *next = i + 1 < n ? &t[i + 1] : NULL;
        if (sg_luasrc_token_is(src, k, "return")) {
            ret_depth = depth;
        } else if (ret_depth == depth &&
                   (sg_luasrc_token_is(src, k, "end") || sg_luasrc_token_is(src, k, "else") ||
                    sg_luasrc_token_is(src, k, "elseif") || sg_luasrc_token_is(src, k, "until") ||
                    sg_luasrc_token_is(src, k, ";"))) {
            ret_depth = -1;
        } else if (k->kind == SG_LUASRC_OTHER && k->len == 1 && strchr("([{", src[k->off])) {
            char kind = src[k->off];
            if (kind == '(' && prev &&
                ((prev->kind == SG_LUASRC_NAME && !sg_luasrc_is_keyword(src, prev)) ||
                 prev->kind == SG_LUASRC_STRING || sg_luasrc_token_is(src, prev, ")") ||
                 sg_luasrc_token_is(src, prev, "]")))
                kind = 'c';
            if (depth < (int)sizeof stack) stack[depth] = kind;
            depth++;
        } else if (k->kind == SG_LUASRC_OTHER && k->len == 1 && strchr(")]}", src[k->off])) {
            if (depth > 0) depth--;
            if (ret_depth > depth) ret_depth = -1;
        } else if (k->kind == SG_LUASRC_STRING) {
            char inner = depth > 0 && depth <= (int)sizeof stack ? stack[depth - 1] : 0;
            static const char *const ops[] = {"==", "~=", "..", "<", ">", "<=", ">="};
            int operand = 0;
            for (size_t o = 0; o < SG_ARRAY_LEN(ops); o++)
                operand |=
                    sg_luasrc_token_is(src, prev, ops[o]) || sg_luasrc_token_is(src, next, ops[o]);
            int reason = sg_luasrc_token_is(src, prev, "=") && i >= 2 &&
                         (sg_luasrc_token_is(src, &t[i - 2], "why") ||
                          sg_luasrc_token_is(src, &t[i - 2], "deny"));
            int call_arg =
                prev && ((prev->kind == SG_LUASRC_NAME && !sg_luasrc_is_keyword(src, prev)) ||
                         sg_luasrc_token_is(src, prev, ")"));
            int returned = ret_depth >= 0 && depth >= ret_depth && inner != 'c' && inner != '[' &&
                           !operand && !reason && !call_arg;
            if (!memchr(src + k->off, '\\', k->len) && sg_scope_token_valid(src + k->off, k->len))
                add_fconst(ld, src, k, r, path, returned);
        }
    }
    free(t);
}

/* Sorts the collected constants into p->fscopes once every scope is
 * known: returned constants (reserved words aside) and constants naming a
 * known scope. A returned "public" makes protocol plumbing public (the
 * rule may let anonymous callers in). A returned constant the policy does not know is a warning
 * (returning it would be a policy error at run time). */
void policy_finish_function_scopes(loader *ld)
{
    sg_policy *p = ld->p;
    if (!ld->nfconsts) return;
    p->fscopes = sg_arena_alloc(&p->arena, ld->nfconsts * sizeof *p->fscopes);
    if (!p->fscopes) luaL_error(ld->L, "out of memory");
    for (size_t i = 0; i < ld->nfconsts; i++) {
        const struct fconst *c = &ld->fconsts[i];
        if (c->returned && c->len == 6 && memcmp(c->text, "public", 6) == 0) p->any_public = 1;
        if (policy_reserved_meaning(c->text, c->len)) continue;
        int known = sg_universe_find(p->u, c->text, c->len) >= 0;
        if (!c->returned && !known) continue;
        int dup = 0;
        for (int j = 0; j < p->nfscopes && !dup; j++)
            dup = p->fscopes[j].rule == c->rule && strcmp(p->fscopes[j].scope, c->text) == 0 &&
                  p->fscopes[j].returned >= c->returned;
        if (dup) continue;
        p->fscopes[p->nfscopes++] =
            (sg_policy_scope_use){c->text, c->rule, c->file, c->line, c->returned, known};
        if (c->returned && !known) {
            char q[160];
            sg_buf_printf(&ld->report,
                          "%s:%d: warning: %s: scope %s returned by this function is not declared "
                          "(a typo? returning it would be a policy error; list it in `scopes`)\n",
                          c->file, c->line, c->rule, policy_quoted(q, sizeof q, c->text, c->len));
        }
    }
}
