/* patterncost.c -- the pattern cost model of the sandbox: implements
 * sg_sandbox_pattern_cost (sandbox.h). Pure computation, no Lua state: a
 * bound on the backtracking work of one Lua pattern match, used to refuse
 * patterns that would run for seconds inside C where hooks cannot stop
 * them. */
#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/sandbox.h"

/* ---- pattern cost model ------------------------------------------------------
 * Lua patterns are matched by backtracking. For each pattern item we bound
 * the work C(i) of matching the pattern's suffix from item i at one subject
 * position, for a subject of n bytes:
 *   plain item, capture, anchor, frontier:  1 + C(i+1)
 *   x?                                      1 + 2*C(i+1)
 *   %bxy, back-reference:                   n + C(i+1)
 *   x*, x+, x- :
 *     the rest matches anywhere (it can     n + C(i+1)   (first try wins)
 *     match empty, or ends in .*$)
 *     the rest must begin with a char x
 *     can never match                       n*(1+k) + C(i+1)
 *                                           (k = optional items before it)
 *     otherwise                             n + (n+1)*C(i+1)
 * and the whole search tries n+1 start positions unless anchored. It is an
 * upper-bound-minded estimate: it refuses a*a*a*b on long strings and
 * accepts the usual ^(%w+):(.*)$ in linear cost. */

typedef struct charset {
    uint64_t w[4];
} charset;

static void cs_add(charset *s, unsigned c)
{
    s->w[c >> 6] |= (uint64_t)1 << (c & 63);
}
static void cs_fill(charset *s)
{
    for (int i = 0; i < 4; i++)
        s->w[i] = ~(uint64_t)0;
}
static void cs_invert(charset *s)
{
    for (int i = 0; i < 4; i++)
        s->w[i] = ~s->w[i];
}
static void cs_union(charset *d, const charset *s)
{
    for (int i = 0; i < 4; i++)
        d->w[i] |= s->w[i];
}
static int cs_meets(const charset *a, const charset *b)
{
    for (int i = 0; i < 4; i++)
        if (a->w[i] & b->w[i]) return 1;
    return 0;
}

/* Adds the characters of class letter c (%a, %D, ...), or c itself when it
 * is not a class letter (an escaped literal). */
static void cs_add_class(charset *s, unsigned char c)
{
    charset k = {{0, 0, 0, 0}};
    int (*test)(int) = NULL;
    switch (tolower(c)) {
    case 'a':
        test = isalpha;
        break;
    case 'c':
        test = iscntrl;
        break;
    case 'd':
        test = isdigit;
        break;
    case 'g':
        test = isgraph;
        break;
    case 'l':
        test = islower;
        break;
    case 'p':
        test = ispunct;
        break;
    case 's':
        test = isspace;
        break;
    case 'u':
        test = isupper;
        break;
    case 'w':
        test = isalnum;
        break;
    case 'x':
        test = isxdigit;
        break;
    default:
        cs_add(s, c);
        return;
    }
    for (unsigned i = 0; i < 256; i++)
        if (test((int)i)) cs_add(&k, i);
    if (isupper(c)) cs_invert(&k);
    cs_union(s, &k);
}

enum { IT_CHAR, IT_ZERO_WIDTH, IT_END_ANCHOR, IT_SCAN };

typedef struct pattern_item {
    int kind;   /* IT_* */
    char quant; /* 0, '*', '+', '-', '?' (IT_CHAR only) */
    charset set;
} pattern_item;

/* Parses one single-character class at p[*i]; returns 0, or -1 when the
 * pattern is malformed (Lua itself will then report it). */
static int parse_class(const char *p, size_t len, size_t *i, charset *out)
{
    memset(out, 0, sizeof *out);
    unsigned char c = (unsigned char)p[*i];
    if (c == '.') {
        cs_fill(out);
        (*i)++;
    } else if (c == '%') {
        if (*i + 1 >= len) return -1;
        cs_add_class(out, (unsigned char)p[*i + 1]);
        *i += 2;
    } else if (c == '[') {
        size_t j = *i + 1;
        int negate = 0;
        if (j < len && p[j] == '^') {
            negate = 1;
            j++;
        }
        int first = 1;
        for (;;) {
            if (j >= len) return -1;
            if (!first && p[j] == ']') break;
            first = 0;
            unsigned char a = (unsigned char)p[j];
            if (a == '%') {
                if (j + 1 >= len) return -1;
                cs_add_class(out, (unsigned char)p[j + 1]);
                j += 2;
            } else if (j + 2 < len && p[j + 1] == '-' && p[j + 2] != ']') {
                for (unsigned x = a; x <= (unsigned char)p[j + 2]; x++)
                    cs_add(out, x);
                j += 3;
            } else {
                cs_add(out, a);
                j++;
            }
        }
        if (negate) cs_invert(out);
        *i = j + 1;
    } else {
        cs_add(out, c);
        (*i)++;
    }
    return 0;
}

/* Splits a pattern into items. Returns the count, or -1 when malformed. */
static int parse_items(const char *p, size_t len, pattern_item *items)
{
    size_t i = 0;
    int n = 0;
    while (i < len) {
        pattern_item *it = &items[n++];
        it->quant = 0;
        memset(&it->set, 0, sizeof it->set);
        char c = p[i];
        if (c == '(' || c == ')') {
            it->kind = IT_ZERO_WIDTH;
            i++;
        } else if (c == '$' && i + 1 == len) {
            it->kind = IT_END_ANCHOR;
            i++;
        } else if (c == '%' && i + 1 < len && p[i + 1] == 'b') {
            if (i + 3 >= len) return -1;
            it->kind = IT_SCAN;
            cs_fill(&it->set);
            i += 4;
        } else if (c == '%' && i + 1 < len && p[i + 1] == 'f') {
            i += 2;
            if (i >= len || p[i] != '[') return -1;
            if (parse_class(p, len, &i, &it->set) != 0) return -1;
            it->kind = IT_ZERO_WIDTH;
            cs_fill(&it->set);
        } else if (c == '%' && i + 1 < len && p[i + 1] >= '0' && p[i + 1] <= '9') {
            it->kind = IT_SCAN;
            cs_fill(&it->set);
            i += 2;
        } else {
            if (parse_class(p, len, &i, &it->set) != 0) return -1;
            it->kind = IT_CHAR;
            if (i < len && strchr("*+-?", p[i])) it->quant = p[i++];
        }
    }
    return n;
}

/* What the suffix items[i..] of a pattern can do, kept walking backwards:
 * what it can begin with (first), whether it matches at any position
 * (always), whether it matches at the end of the subject (at_end) and how
 * many optional items precede its first required one (chain). lead_ok: the
 * pattern starts (after captures) with a required single character whose
 * suffix always matches, so an attempt either fails on its first byte or
 * succeeds: unanchored search is then linear. */
typedef struct suffix_summary {
    charset first;
    int always, at_end, chain;
    int lead_ok;
} suffix_summary;

/* The worst-case steps of matching item `it` followed by a suffix that
 * costs `rest` and is summarised by s, on a subject of n bytes. */
static double item_cost(const pattern_item *it, double rest, double n, const suffix_summary *s)
{
    switch (it->kind) {
    case IT_ZERO_WIDTH:
    case IT_END_ANCHOR:
        return 1 + rest;
    case IT_SCAN:
        return n + rest;
    default:
        if (it->quant == '?') return 1 + 2 * rest;
        if (it->quant == 0) return 1 + rest;
        if (s->always) return n + rest;
        if (!cs_meets(&it->set, &s->first)) return n * (1 + s->chain) + rest;
        return n + (n + 1) * rest;
    }
}

/* Updates s, the summary of items[i+1..], to describe items[i..]. */
static void suffix_prepend(suffix_summary *s, const pattern_item *it)
{
    int capture = it->kind == IT_ZERO_WIDTH && it->set.w[0] == 0 && it->set.w[1] == 0;
    if (!capture)
        s->lead_ok = it->kind == IT_CHAR && (it->quant == 0 || it->quant == '+') && s->always;
    if (capture) {
        /* a capture bracket: transparent */
    } else if (it->kind == IT_CHAR && (it->quant == '*' || it->quant == '-' || it->quant == '?')) {
        charset all;
        cs_fill(&all);
        /* .* or .- before something that matches at the end can always eat
         * its way there. */
        if (it->quant != '?' && s->at_end && memcmp(&it->set, &all, sizeof all) == 0) s->always = 1;
        cs_union(&s->first, &it->set);
        s->chain++;
    } else if (it->kind == IT_END_ANCHOR) {
        memset(&s->first, 0, sizeof s->first);
        s->always = 0;
        s->at_end = 1;
        s->chain = 0;
    } else {
        /* a required item: the suffix now starts with exactly it */
        s->first = it->set;
        s->always = s->at_end = 0;
        s->chain = 0;
    }
}

double sg_sandbox_pattern_cost(const char *p, size_t plen, size_t subject_len, int anchored_ok)
{
    int anchored = anchored_ok && plen > 0 && p[0] == '^';
    if (anchored) {
        p++;
        plen--;
    }
    if (plen > 65536) return INFINITY;
    pattern_item small[64];
    pattern_item *items = plen < SG_ARRAY_LEN(small) ? small : malloc((plen + 1) * sizeof *items);
    if (!items) return INFINITY;
    int count = parse_items(p, plen, items);
    if (count < 0) {
        if (items != small) free(items);
        return 1; /* malformed: Lua raises its own error before matching */
    }
    double n = (double)subject_len;
    double cost = 1; /* C(count): the empty suffix */
    suffix_summary s = {.first = {{0, 0, 0, 0}}, .always = 1, .at_end = 1};
    for (int i = count - 1; i >= 0; i--) {
        cost = item_cost(&items[i], cost, n, &s);
        suffix_prepend(&s, &items[i]);
    }
    if (items != small) free(items);
    if (anchored) return cost;
    return s.lead_ok ? n + cost : cost * (n + 1);
}
