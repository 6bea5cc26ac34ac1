-- policies/examples/per_resource.lua -- the journal server with a read /
-- write pair per resource family (presets.per_resource): entries and tags.
-- MCP resources and prompts are named under the family whose read scope
-- they need.
local presets = require "presets"

local policy = presets.per_resource {
  prefix = "journal",
  resources = {
    entries = {
      read = { "list_entries", "get_entry" },
      write = { "create_entry", "update_entry", "delete_entry" },
      uris = { "journal://entries/*" },
      prompts = { "summarize_week" },
    },
    tags = {
      write = { "tag_entry" },
    },
  },
  resource = "https://journal.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
}
policy.tools.ping = "public"
-- One dynamic rule: permanent deletion needs both write scopes.
policy.tools.delete_entry = function(req)
  if req.phase == "call" and req.arguments.permanent then
    return { all_of = { "journal:entries:write", "journal:tags:write" }, why = "permanent deletion" }
  end
  return "journal:entries:write"
end
return policy
