/* metadata.h -- RFC 9728 OAuth 2.0 Protected Resource Metadata.
 *
 * Where clients find out how to get a token for this resource: the URL the
 * challenges point at, and the JSON document served there, both derived
 * from the policy (resource, authorization_servers, scopes_supported). */
#ifndef SG_METADATA_H
#define SG_METADATA_H

#include "policy/policy.h"
#include "base/sg.h"

#define SG_WELL_KNOWN_PRM "/.well-known/oauth-protected-resource"

/* Appends the metadata URL for an MCP endpoint URL: the well-known path is
 * inserted between the authority and the endpoint's path (RFC 9728 section
 * 3.1), e.g. https://h/mcp -> https://h/.well-known/oauth-protected-resource/mcp.
 * Query and fragment are dropped. Returns 0, or -1 when endpoint_url is not
 * an absolute http(s) URL with a host (nothing appended). */
int sg_metadata_url(const char *endpoint_url, sg_buf *out);

/* Appends the metadata document for policy p with `resource` as the
 * resource identifier: {"resource", "authorization_servers" (the policy's;
 * when it names none, [default_as] if that is not NULL: the issuer the
 * gateway discovered),
 * "scopes_supported", "bearer_methods_supported":["header"], and
 * "resource_name" from the realm when there is one}. Can't fail
 * (allocation failure is recorded in out). */
void sg_metadata_document(const sg_policy *p, const char *resource, const char *default_as,
                          sg_buf *out);

#endif
