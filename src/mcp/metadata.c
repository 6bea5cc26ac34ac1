/* metadata.c -- RFC 9728 metadata URL and document (see metadata.h). */
#include "mcp/metadata.h"

#include <string.h>
#include <strings.h>

#include "base/json.h"

int sg_metadata_url(const char *endpoint_url, sg_buf *out)
{
    size_t scheme;
    if (strncasecmp(endpoint_url, "https://", 8) == 0)
        scheme = 8;
    else if (strncasecmp(endpoint_url, "http://", 7) == 0)
        scheme = 7;
    else
        return -1;
    const char *authority = endpoint_url + scheme;
    size_t alen = strcspn(authority, "/?#");
    if (alen == 0) return -1;
    const char *path = authority + alen;
    size_t plen = strcspn(path, "?#");
    if (plen == 1 && path[0] == '/') plen = 0; /* the root: no suffix */
    sg_buf_append(out, endpoint_url, scheme + alen);
    sg_buf_puts(out, SG_WELL_KNOWN_PRM);
    sg_buf_append(out, path, plen);
    return 0;
}

static void string_array(sg_buf *b, const char *const *items, int n)
{
    sg_buf_putc(b, '[');
    for (int i = 0; i < n; i++) {
        if (i) sg_buf_putc(b, ',');
        sg_json_append_string(b, items[i], strlen(items[i]));
    }
    sg_buf_putc(b, ']');
}

void sg_metadata_document(const sg_policy *p, const char *resource, const char *default_as,
                          sg_buf *out)
{
    const char *const *list = NULL;
    sg_buf_puts(out, "{\"resource\":");
    sg_json_append_string(out, resource, strlen(resource));
    int n = sg_policy_authorization_servers(p, &list);
    if (n == 0 && default_as) { /* the policy stays authoritative when it names any */
        list = &default_as;
        n = 1;
    }
    sg_buf_puts(out, ",\"authorization_servers\":");
    string_array(out, list, n);
    n = sg_policy_scopes_supported(p, &list);
    sg_buf_puts(out, ",\"scopes_supported\":");
    string_array(out, list, n);
    sg_buf_puts(out, ",\"bearer_methods_supported\":[\"header\"]");
    const char *realm = sg_policy_realm(p);
    if (realm) {
        sg_buf_puts(out, ",\"resource_name\":");
        sg_json_append_string(out, realm, strlen(realm));
    }
    sg_buf_putc(out, '}');
}
