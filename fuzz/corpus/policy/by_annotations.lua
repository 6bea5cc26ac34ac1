-- policies/examples/by_annotations.lua -- the journal server classified by
-- its own MCP tool annotations (presets.by_annotations): readOnlyHint ->
-- journal:tools:read, destructiveHint = false -> journal:tools:write,
-- otherwise (destructive, or no hints: the MCP defaults) journal:admin. A tool the gateway has no annotations for is denied.
-- Explicit rules win over the classification.
local presets = require "presets"

local policy = presets.by_annotations {
  prefix = "journal",
  resource = "https://journal.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  advertise = { "journal:tools:read" },
}
policy.tools.ping = "public"                        -- overrides readOnlyHint
policy.tools.update_entry = "journal:tools:write"   -- destructive, but we allow writers
policy.resources["journal://entries/*"] = "journal:tools:read"
policy.prompts.summarize_week = "journal:tools:read"
return policy
