-- policies/examples/read_write.lua -- the journal server with read / write /
-- admin scopes (presets.read_write): journal:write implies journal:read,
-- journal:admin implies journal:write; listing needs journal:read.
local presets = require "presets"

local policy = presets.read_write {
  prefix = "journal",
  read = { "list_entries", "get_entry" },
  write = { "create_entry", "tag_entry" },
  admin = { "update_entry", "delete_entry" },
  resource = "https://journal.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  advertise = { "journal:read" },
}
-- Extend the result like any policy table.
policy.tools.ping = "public"
policy.resources["journal://entries/*"] = "journal:read"
policy.prompts.summarize_week = "journal:read"
return policy
