-- function rules with pattern matching on attacker-controlled input
return {
  resource = "https://fuzz.example.com/mcp",
  scopes = { a = "A", b = "B" },
  tools = {
    search_notes = function(req)
      local q = tostring(req.arguments and req.arguments.id or "")
      if q:find("^(x+)+y$") then return "a" end
      if q:gsub("%w", "%0%0"):len() > 3 then return { any_of = { "a", "b" } } end
      return { all_of = { "a", "b" }, why = "both" }
    end,
  },
  resources = { ["journal://entries/{id}"] = "a", ["journal://*"] = "b" },
  methods = { ["custom/method"] = "authenticated" },
  default = "public",
}
