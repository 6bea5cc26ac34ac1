-- policies/examples/catch_all.lua -- the journal server behind one scope.
-- presets.catch_all: every message needs `journal`; ping stays public.
local presets = require "presets"

return presets.catch_all {
  scope = "journal",
  description = "Use the journal",
  resource = "https://journal.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  tools = { ping = "public" },
}
