-- tests/interop/policies/everything.lua -- scopegate's policy for
-- @modelcontextprotocol/server-everything in the interop suite.
--
-- Why it exists: the end-to-end test needs a real upstream with many tools
-- and a policy that splits them three ways, so that one run shows a public
-- tool, scoped tools, a tool only a step-up reaches, and tools nobody may see.
-- Tool names are those server-everything 2026.8.31 lists (13 tools, more for
-- clients with sampling/elicitation capabilities); the ones
-- not named here (get-env, which would leak the server's environment,
-- gzip-file-as-resource, which fetches URLs, simulate-research-query, ...)
-- fall to `default = "deny"`: hidden from tools/list and refused with 403.
return {
  realm = "everything",

  scopes = {
    ["everything:read"]  = "Call the read-only demo tools, prompts and resources",
    ["everything:admin"] = "Long-running and state-changing demo tools",
  },
  advertise = { "everything:read" },
  implies = { ["everything:admin"] = { "everything:read" } },

  tools = {
    echo                               = "public",
    ["get-sum"]                        = "everything:read",
    ["get-tiny-image"]                 = "everything:read",
    ["get-structured-content"]         = "everything:read",
    ["get-annotated-message"]          = "everything:read",
    ["trigger-long-running-operation"] = "everything:admin",
    ["toggle-simulated-logging"]       = "everything:admin",
    ["trigger-sampling-request"]       = "everything:admin", -- listed only to clients that can sample
  },
  prompts = {
    ["simple-prompt"] = "everything:read",
    ["args-prompt"]   = "everything:read",
  },
  resources = {
    ["demo://resource/static/*"] = "everything:read",
  },
  methods = {
    ["logging/setLevel"] = "everything:admin",
  },
  default = "deny",
}
