-- scopegate test policies/examples/catch_all.test.lua
return {
  policy = "catch_all.lua",
  cases = {
    { "any tool needs the one scope", tool = "delete_entry", arguments = { id = "1" },
      scopes = { "journal" }, expect = "allow" },
    { "a caller without a token is asked for it", tool = "list_entries",
      expect = "401", challenge = { "journal" } },
    { "a token without the scope steps up to it", tool = "create_entry",
      scopes = { "profile" }, expect = "403", challenge = { "journal" } },
    { "resources need it too", resource = "journal://entries/1", scopes = { "journal" },
      expect = "allow", rule = "default" },
    { "prompts too", prompt = "summarize_week", expect = "401", challenge = { "journal" } },
    { "ping is public", tool = "ping", expect = "allow", rule = "tools.ping" },
    { "anonymous callers can initialize (the policy has a public rule)",
      method = "initialize", params = { protocolVersion = "2025-06-18", capabilities = {},
                                        clientInfo = { name = "t", version = "1" } },
      expect = "allow" },
  },
}
