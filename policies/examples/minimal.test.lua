-- scopegate test policies/examples/minimal.test.lua
return {
  policy = "minimal.lua",
  cases = {
    { "notes:read searches", tool = "search_notes", arguments = { q = "x" },
      scopes = { "notes:read" }, expect = "allow" },
    { "notes:read cannot create (the README's example)", tool = "create_note",
      scopes = { "notes:read" }, expect = "403", challenge = { "notes:read", "notes:write" } },
    { "bulk deletion is disabled", tool = "delete_note", arguments = { everything = true },
      scopes = { "notes:write" }, expect = "deny", rule = "tools.delete_note" },
    { "single deletion needs write", tool = "delete_note", arguments = { id = 1 },
      scopes = { "notes:write" }, expect = "allow" },
    { "ping is public", tool = "ping", expect = "allow" },
    { "anything else is denied", tool = "export", scopes = { "notes:write" }, expect = "deny" },
    { "no token: 401", tool = "search_notes", expect = "401", challenge = { "notes:read" } },
  },
}
