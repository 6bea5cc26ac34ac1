/* json_impl.h -- what the two JSON readers of src/base share.
 *
 * json.c (the strict pre-scan and the string writer) and jsonanswer.c (the
 * one-pass answer reader of the audit log) both skip the run of bytes a
 * JSON string holds as they are; one table and one loop do it for both.
 * Private to src/base. */
#ifndef SG_JSON_IMPL_H
#define SG_JSON_IMPL_H

#include <stddef.h>

/* 1 for the bytes a JSON string holds as they are: printable ASCII but '"'
 * and '\\'. */
extern const unsigned char sg_json_plain[256];

/* Past the run of such bytes from p[i], eight at a time: the long runs of
 * sg_json_plain_run. Can't fail. */
size_t sg_json_plain_words(const unsigned char *p, size_t i, size_t len);

/* Past the run of such bytes from p[i] (i may be past len: returned as it
 * is). Most strings of a JSON-RPC message are short: their first sixteen
 * bytes are looked at one by one, in line; a longer run goes on eight at a
 * time. Can't fail. */
static inline size_t sg_json_plain_run(const unsigned char *p, size_t i, size_t len)
{
    if (i >= len) return i;
    size_t first = len - i > 16 ? i + 16 : len;
    while (i < first && sg_json_plain[p[i]])
        i++;
    return i == first && first < len ? sg_json_plain_words(p, i, len) : i;
}

#endif
