-- policies/examples/minimal.lua
return {
  resource = "https://notes.example.com/mcp",
  authorization_servers = { "https://auth.example.com" },
  scopes = {
    ["notes:read"]  = "Read notes",
    ["notes:write"] = "Create and edit notes",
  },
  implies = { ["notes:write"] = { "notes:read" } },
  tools = {
    search_notes = "notes:read",
    create_note  = "notes:write",
    delete_note  = function(req)            -- decided per request
      if req.phase == "call" and req.arguments.everything then
        return { deny = "bulk deletion is disabled" }
      end
      return "notes:write"
    end,
    ping = "public",
  },
  default = "deny",                         -- anything not named is refused
}
