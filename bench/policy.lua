-- bench/policy.lua -- the policy scopegate enforces in bench/run.
--
-- Ten tools over three scopes, static rules only, so the benchmark measures
-- the gateway's per-request path (token, parse, lookup, decide, proxy) and
-- not a policy function. bench/haproxy.cfg.in encodes the same table as
-- ACLs; keep the two in step. bench/run sends tools/call search_notes
-- (needs bench:read) with a token that has bench:read (allowed, 200) and one
-- that has only bench:profile (denied, 403 insufficient_scope). It also
-- generates a 10,000-tool variant of this file to show that the cost of a
-- request does not grow with the size of the policy.
return {
  resource = "https://bench.example/mcp",
  authorization_servers = { "https://auth.bench.example" },
  scopes = {
    ["bench:read"]    = "Read notes",
    ["bench:write"]   = "Create and edit notes",
    ["bench:admin"]   = "Delete notes for good",
    ["bench:profile"] = "Read the caller's own profile",
  },
  advertise = { "bench:read" },
  tools = {
    search_notes  = "bench:read",
    get_note      = "bench:read",
    list_notes    = "bench:read",
    list_tags     = "bench:read",
    get_profile   = "bench:profile",
    create_note   = "bench:write",
    update_note   = "bench:write",
    tag_note      = "bench:write",
    delete_note   = "bench:admin",
    purge_notes   = "bench:admin",
  },
  default = "deny",
}
