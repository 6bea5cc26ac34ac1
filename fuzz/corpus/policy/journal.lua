-- policies/examples/journal.lua -- the example policy from docs/policy.md.
--
-- A journal MCP server: reading entries needs journal:entries:read, changing
-- them journal:entries:write, deleting them for good journal:admin (which
-- implies the others). `scopegate check policies/examples/journal.lua`
-- lints it.
return {
  realm    = "journal",
  resource = "https://journal.example.com/mcp",          -- canonical resource URI (audience)
  authorization_servers = { "https://auth.example.com" },

  scopes = {                                             -- every scope this server defines
    ["journal:entries:read"]  = "Read journal entries",
    ["journal:entries:write"] = "Create and edit entries",
    ["journal:admin"]         = "Delete entries for good",
  },
  advertise = { "journal:entries:read" },                -- scopes_supported (minimal set)
  implies = {                                            -- optional hierarchy
    ["journal:admin"]         = { "journal:entries:write" },
    ["journal:entries:write"] = { "journal:entries:read" },
  },

  tools = {
    list_entries = "journal:entries:read",                                   -- one scope
    get_entry    = { any_of = { "journal:entries:read", "journal:entries:write" } },
    create_entry = "journal:entries:write",
    update_entry = "journal:entries:write",
    tag_entry    = { all_of = { "journal:entries:read", "journal:entries:write" } },
    ping         = "public",                                                 -- no token needed
    delete_entry = function(req)                                             -- per request
      if req.phase == "call" and req.arguments.permanent then
        return { all_of = { "journal:admin" }, why = "permanent deletion" }
      end
      return "journal:entries:write"
    end,
  },
  resources = { ["journal://entries/*"] = "journal:entries:read" },          -- URI patterns
  prompts   = { summarize_week = "journal:entries:read" },
  methods   = { ["logging/setLevel"] = "journal:admin" },                    -- any other method
  default   = "deny",                                                        -- what is not named
}
