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

/* Past the run of such bytes from p[i] (i may be past len: returned as it
 * is). Can't fail. */
size_t sg_json_plain_run(const unsigned char *p, size_t i, size_t len);

#endif
