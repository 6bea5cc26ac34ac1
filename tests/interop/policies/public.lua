-- tests/interop/policies/public.lua -- an all-public policy for running the
-- MCP conformance suite through scopegate.
--
-- Why it exists: the conformance runner cannot send a bearer token, so the
-- only way to run it through the gateway is a policy that lets every message
-- through anonymously. Then any scenario that passes against the upstream
-- directly but fails through scopegate is the gateway's fault (framing,
-- headers, SSE, sessions, list filtering), not the policy's.
--
-- `default = "public"` covers tools, prompts, resources and unknown methods.
-- The protocol plumbing (initialize, ping, notifications/*, */list,
-- completion/complete) has built-in rules that are "authenticated" unless the
-- policy has a static "public" rule in tools, prompts or resources: the
-- `tools` entry below is what makes them public (no tool need be called echo).
return {
  realm = "conformance",
  tools = { echo = "public" },
  default = "public",
}
