/* tcache.c -- the verified-token cache, one per worker thread (not locked).
 *
 * A hit is the same bytes as a token verified before and not yet at its
 * exp: a keyed hash of the token's end (SipHash-2-4, a random key per
 * cache) finds the entry and the whole token is compared. Bounded, CLOCK
 * eviction; refusals are not cached. Each cache also holds its worker's
 * reused OpenSSL contexts (token_jws.c), which every miss verifies with. */
#include "auth/token_impl.h"
#include "base/metrics.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

/* ---- the table ------------------------------------------------------------------
 * Chained hash table over a fixed array of slots; buckets and chains hold
 * slot indexes. SipHash-2-4 with a per-cache random key keeps an attacker
 * from aiming many tokens at one bucket; the full bytes are compared.
 *
 * Only a token's last HASH_TAIL bytes are hashed (its signature's end):
 * hashing a whole 600-byte token was a tenth of a cached request's own
 * instructions. That keeps the table as even as hashing everything: only
 * tokens that verified are ever inserted, the signatures of two tokens an
 * issuer signed differ everywhere, and what an attacker sends without a
 * valid signature can only be looked up, never lengthen a chain. */
#define HASH_TAIL 64

#define NIL (-1)

typedef struct tc_entry {
    uint64_t hash;
    char *bytes;
    size_t len;
    owned_token *token; /* NULL: the slot is free */
    int32_t next;       /* next slot in the bucket chain, or in the free list */
    int referenced;     /* CLOCK bit */
} tc_entry;

struct sg_tcache {
    const sg_verifier *v;
    tc_entry *slots;
    size_t capacity, size, hand;
    int32_t *buckets;
    uint64_t mask;
    int32_t free_head;
    uint64_t k0, k1;
    owned_token *uncached; /* a token verified but not cacheable, until the next call */
    sg_tcache_stats stats;
    verify_ctx vc; /* this worker's OpenSSL contexts, reused by every miss */
};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m; /* the 8 bytes as a little-endian word, as SipHash reads them */
        memcpy(&m, in + i, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = __builtin_bswap64(m);
#endif
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t b = 0; b < (len & 7); b++)
        last |= (uint64_t)in[whole + b] << (8 * b);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

sg_tcache *sg_tcache_new(const sg_verifier *v, size_t max_entries)
{
    if (!max_entries) max_entries = SG_TCACHE_DEFAULT_ENTRIES;
    if (max_entries > (1u << 24)) max_entries = 1u << 24;
    sg_tcache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->v = v;
    c->capacity = max_entries;
    size_t nb = 16;
    while (nb < max_entries * 2)
        nb *= 2;
    c->mask = nb - 1;
    c->slots = calloc(max_entries, sizeof *c->slots);
    c->buckets = malloc(nb * sizeof *c->buckets);
    unsigned char key[16];
    if (!c->slots || !c->buckets || RAND_bytes(key, sizeof key) != 1) {
        sg_tcache_free(c);
        return NULL;
    }
    memcpy(&c->k0, key, 8);
    memcpy(&c->k1, key + 8, 8);
    for (size_t i = 0; i < nb; i++)
        c->buckets[i] = NIL;
    for (size_t i = 0; i < max_entries; i++)
        c->slots[i].next = i + 1 < max_entries ? (int32_t)(i + 1) : NIL;
    c->free_head = 0;
    c->stats.capacity = max_entries;
    return c;
}

void sg_tcache_free(sg_tcache *c)
{
    if (!c) return;
    if (c->slots)
        for (size_t i = 0; i < c->capacity; i++) {
            sg_token_free(c->slots[i].token ? &c->slots[i].token->pub : NULL);
            free(c->slots[i].bytes);
        }
    sg_token_free(c->uncached ? &c->uncached->pub : NULL);
    tok_verify_ctx_clear(&c->vc);
    EVP_MD_CTX_free(c->vc.md);
    free(c->slots);
    free(c->buckets);
    free(c);
}

/* Unlinks slot i from its chain, frees its token and puts it on the free
 * list. */
static void tc_remove(sg_tcache *c, int32_t i)
{
    tc_entry *e = &c->slots[i];
    int32_t *link = &c->buckets[e->hash & c->mask];
    while (*link != i)
        link = &c->slots[*link].next;
    *link = e->next;
    sg_token_free(&e->token->pub);
    free(e->bytes);
    memset(e, 0, sizeof *e);
    e->next = c->free_head;
    c->free_head = i;
    c->size--;
}

void sg_tcache_clear(sg_tcache *c)
{
    for (size_t i = 0; i < c->capacity; i++)
        if (c->slots[i].token) tc_remove(c, (int32_t)i);
    tok_verify_ctx_clear(&c->vc); /* and the references on keys that may be gone */
}

/* Takes a free slot, evicting with CLOCK when full. */
static int32_t tc_take_slot(sg_tcache *c)
{
    if (c->free_head == NIL) {
        for (;;) {
            tc_entry *e = &c->slots[c->hand];
            if (e->token && !e->referenced) break;
            e->referenced = 0;
            c->hand = (c->hand + 1) % c->capacity;
        }
        tc_remove(c, (int32_t)c->hand);
        c->stats.evictions++;
    }
    int32_t i = c->free_head;
    c->free_head = c->slots[i].next;
    return i;
}

sg_token_err sg_tcache_verify(sg_tcache *c, const char *token, size_t len, int64_t now,
                              const sg_token **out)
{
    return sg_tcache_verify_ex(c, token, len, now, SG_KID_BLOCK, NULL, out);
}

sg_token_err sg_tcache_verify_ex(sg_tcache *c, const char *token, size_t len, int64_t now,
                                 sg_kid_wait kw, uint64_t *ticket, const sg_token **out)
{
    *out = NULL;
    if (ticket) *ticket = 0;
    sg_token_free(c->uncached ? &c->uncached->pub : NULL);
    c->uncached = NULL;
    if (len > c->v->max_token_bytes) return SG_TOKEN_TOO_LARGE; /* before hashing it */

    size_t tail = len < HASH_TAIL ? len : HASH_TAIL;
    uint64_t h = siphash24(c->k0, c->k1, (const unsigned char *)token + len - tail, tail);
    for (int32_t i = c->buckets[h & c->mask]; i != NIL; i = c->slots[i].next) {
        tc_entry *e = &c->slots[i];
        if (e->hash != h || e->len != len || memcmp(e->bytes, token, len) != 0) continue;
        if (now >= e->token->pub.exp) {
            tc_remove(c, i); /* verify again: the leeway decides, not the cache */
            c->stats.expired++;
            break;
        }
        e->referenced = 1;
        c->stats.hits++;
        sg_metric_inc(SG_M_TOKEN_CACHE_HITS);
        *out = &e->token->pub;
        return SG_TOKEN_OK;
    }
    c->stats.misses++;
    sg_metric_inc(SG_M_TOKEN_CACHE_MISSES);

    owned_token *o;
    sg_token_err err = tok_verify_jws(c->v, token, len, now, kw, ticket, &c->vc, &o);
    if (err != SG_TOKEN_OK) return err;
    sg_token *fresh = &o->pub;
    char *bytes = now < fresh->exp ? malloc(len ? len : 1) : NULL;
    if (!bytes) { /* inside the leeway window or out of memory: serve, don't keep */
        c->uncached = o;
        *out = fresh;
        return SG_TOKEN_OK;
    }
    memcpy(bytes, token, len);
    int32_t i = tc_take_slot(c);
    tc_entry *e = &c->slots[i];
    e->hash = h;
    e->bytes = bytes;
    e->len = len;
    e->token = o;
    e->referenced = 0;
    e->next = c->buckets[h & c->mask];
    c->buckets[h & c->mask] = i;
    c->size++;
    *out = fresh;
    return SG_TOKEN_OK;
}

void sg_tcache_get_stats(const sg_tcache *c, sg_tcache_stats *out)
{
    *out = c->stats;
    out->size = c->size;
}
