/* policy_impl.h -- what the files of the policy runtime share (not a public API).
 *
 * A policy is built once by the loader and then only read: load.c reads
 * the table a policy file returned and validates its top-level keys,
 * rules.c turns each rule into a `rule`, compile.c compiles requirements
 * into sg_req trees (at load, and per request for what a function rule
 * returned), fnscopes.c finds the scopes function rules name in their
 * source, resource.c compiles and matches resource keys (templates and
 * globs), decide.c picks and runs the rule for one message, check.c is
 * `scopegate check`, and policy.c owns the object: its rule tables, its
 * lifetime and the read-only views policy.h offers. */
#ifndef SG_POLICY_IMPL_H
#define SG_POLICY_IMPL_H

#include <stddef.h>

#include <lua.h>

#include "policy/luasrc.h"
#include "policy/policy.h"

#define MAX_REQ_DEPTH     16
#define MAX_REQ_LIST      1024
#define MAX_RUNTIME_NODES 4096
#define MAX_NAME_LEN      1024
#define MAX_WHY_LEN       512
/* `audit = { "arguments.id", ... }` on a rule (see load_audit). */
#define MAX_AUDIT_PATHS   16
#define MAX_AUDIT_KEYS    8
#define MAX_AUDIT_KEY_LEN 64

size_t policy_location_prefix(const char *msg);

/* ---- rules and their tables ----------------------------------------------- */

/* One step of a compiled resource template (see compile_template). */
enum { TP_LIT, TP_ANY1, TP_SEG1, TP_ANYSTAR, TP_SEGSTAR };
typedef struct tmpl_part {
    unsigned char kind, c; /* c: the byte of a TP_LIT */
} tmpl_part;

typedef struct rule {
    const char *key; /* tool/prompt name, resource URI or pattern, method */
    size_t keylen;
    const char *name; /* "tools.delete_entry" */
    int line;
    const sg_req *req;     /* static requirement; NULL for a function rule */
    int ref;               /* registry reference of the function, or LUA_NOREF */
    size_t literal;        /* resource patterns: bytes of literal text */
    size_t unrestricted;   /* resource patterns: `*` and {+var}, which cross '/' */
    const tmpl_part *tmpl; /* resource templates ({var}): the compiled key, else NULL */
    size_t ntmpl;
    const char *const *audit; /* argument paths the audit log records, or NULL */
    int naudit;
} rule;

typedef struct rule_map {
    rule **slots;
    size_t cap, count;
} rule_map;

enum { T_TOOLS, T_PROMPTS, T_RESOURCES, T_METHODS, T_COUNT };
/* "tools", "prompts", "resources", "methods", by T_ index (policy.c). */
extern const char *const policy_table_names[T_COUNT];

struct sg_policy {
    char *path;
    sg_sandbox *sb;
    sg_universe *u;
    sg_arena arena; /* static requirements, names, strings */
    const char *realm, *resource;
    const char **auth_servers;
    int nauth_servers;
    const char **supported;
    int nsupported;
    rule_map maps[T_COUNT];
    rule **globs; /* resource patterns, best first */
    size_t nglobs, globcap;
    rule default_rule;
    int any_public;
    sg_scopeset declared; /* scopes listed in `scopes` */
    int *declared_lines;  /* by scope id (declared ones come first): line of its key */
    int ndeclared_lines;
    int advertise_line; /* 0 when `advertise` is absent */
    int nfunctions;
    rule **functions; /* every function rule, for check */
    size_t functions_cap;
    char hash[SG_POLICY_HASH_LEN + 1]; /* sg_policy_hash */
    int annotations_from_upstream;     /* tool_annotations = "upstream" */
    sg_policy_scope_use *fscopes;      /* scope constants of function rules */
    int nfscopes;
};

typedef struct loader {
    sg_policy *p;
    lua_State *L;
    sg_luasrc idx;
    sg_buf errors; /* "file:line: msg\n" */
    sg_buf report; /* "file:line: error|warning: msg\n" */
    int nerrors;
    sg_arena *arena; /* the policy's: static requirements, names, strings */
    /* String constants of function rules, collected while loading and
     * sorted out once every scope is known (finish_function_scopes). */
    struct fconst {
        const char *text, *rule, *file;
        size_t len;
        int line, returned;
    } * fconsts;
    size_t nfconsts, fconsts_cap;
    char *module_path, *module_src; /* the last module read for a scan */
    size_t module_len;
} loader;

/* ---- policy.c: the rule tables and message helpers ---------------------------- */

/* The rule whose key is key[0..len), or NULL. Can't fail. */
rule *policy_map_get(const rule_map *m, const char *key, size_t len);
/* Adds r (owned by the policy's arena) to m. Returns 0, or -1 when out of memory. */
int policy_map_put(rule_map *m, rule *r);
/* "file:12: rest" -> length of "file:12", or 0 when msg has no location. */
size_t policy_location_prefix(const char *msg);

/* ---- compile.c: requirements -> sg_req trees ----------------------------------- */

/* Records one finding: "file:line: where: message" in ld->errors (errors
 * only) and ld->report. */
void policy_finding(loader *ld, int is_error, int line, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The line of the first token of that kind and text at or after from, else
 * the line of from. Can't fail. */
int policy_line_near(loader *ld, int kind, const char *text, size_t len, size_t from);
/* s[0..len) copied into a; raises a Lua error when out of memory. */
const char *policy_arena_copy(loader *ld, sg_arena *a, const char *s, size_t len);
/* Quotes s for a message into buf, cut to a sane length. Returns buf. */
const char *policy_quoted(char *buf, size_t size, const char *s, size_t len);
/* What a reserved requirement word means, or NULL when s is not one. */
const char *policy_reserved_meaning(const char *s, size_t len);
/* Reports a reserved word used where a scope name belongs. Returns 1 when
 * s was reserved (and reported), else 0. */
int policy_refuse_reserved(loader *ld, int line, const char *where, const char *s, size_t len);
/* A scope named in a requirement, advertise or implies. Returns its id or
 * -1 after reporting. */
int policy_scope_ref(loader *ld, const char *s, size_t len, const char *where, size_t from,
                     const char *context);
/* Compiles the rule at stack index idx into ld->arena: a function sets
 * *is_function and returns NULL. Returns NULL after reporting an error;
 * raises a Lua error when out of memory. */
const sg_req *policy_compile_rule(loader *ld, int idx, const char *where, size_t from,
                                  int *is_function);
/* Compiles what a function rule returned (at stack index idx) into a,
 * per request: no scope is added to the policy, which is only read. Returns
 * the requirement; or NULL with the first error appended to *error. Raises
 * a Lua error when out of memory. */
const sg_req *policy_compile_returned(const sg_policy *p, lua_State *L, sg_arena *a, int idx,
                                      sg_buf *error);

/* ---- load.c: the policy file's table ------------------------------------------- */

/* Offset in the source of the top-level key (0 when not found). */
size_t policy_key_offset(loader *ld, const char *key);
/* Pushes policy[key] (raw). Returns its Lua type. */
int policy_get_top(loader *ld, int policy, const char *key);
/* Loads the policy at path; the findings stay in *ld (free them with
 * policy_loader_free, whatever the result). Returns the policy, or NULL
 * when it has errors. */
sg_policy *policy_load_into(const char *path, const sg_policy_limits *limits, loader *ld);
/* Frees what *ld holds (not the policy). */
void policy_loader_free(loader *ld);
/* The registry key of the metatable that guards req in the list phase. */
extern char policy_list_meta_key;

/* ---- rules.c: one rule table --------------------------------------------------- */

/* Loads the rules of table `which` (T_TOOLS...) of the policy at stack
 * index policy into ld->p. Errors are reported; raises when out of memory. */
void policy_load_rules(loader *ld, int policy, int which);
/* The same for `default`. */
void policy_load_default(loader *ld, int policy);

/* ---- fnscopes.c: scopes named by function rules --------------------------------- */

/* Collects the string constants of the function rule r, written in file
 * between lines first and last. Raises when out of memory. */
void policy_scan_function(loader *ld, const rule *r, const char *file, int first, int last);
/* Sorts the collected constants into p->fscopes once every scope is known. */
void policy_finish_function_scopes(loader *ld);

/* ---- resource.c: resource keys ------------------------------------------------- */

/* Compiles a resource key with RFC 6570 expressions into r->tmpl. Returns
 * 0, or -1 after reporting. */
int policy_compile_template(loader *ld, rule *r);
/* Reports a resource key not in RFC 3986 normal form. Returns 1 when the
 * key was refused. */
int policy_resource_key_abnormal(loader *ld, const rule *r, const char *k, size_t len);
/* qsort order of resource patterns, best (most specific) first. */
int policy_glob_order(const void *a, const void *b);
/* The resource rule for a normalised URI: exact key, else the first
 * pattern that matches; NULL when none. Can't fail. */
const rule *policy_find_resource(const sg_policy *p, const char *uri);

/* ---- decide.c: running a function rule ------------------------------------------ */

/* What policy_call_rule runs and what it returns (result). */
typedef struct call_ctx {
    sg_policy *p;
    const rule *r;
    const sg_policy_input *in;
    sg_arena *arena;
    const sg_req *result;
} call_ctx;
/* A lua_CFunction for sg_sandbox_call with a call_ctx as its light
 * userdata: calls the rule with a fresh req and compiles what it returned
 * into cc->result; raises on any error. */
int policy_call_rule(lua_State *L);

#endif
