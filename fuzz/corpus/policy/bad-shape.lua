return {
  scopes = { ["bad scope"] = 1 },
  implies = { a = { "a" }, b = "c" },
  tools = { x = { all_of = {}, deny = "no" }, y = 42, z = function() error("boom") end },
  default = { any_of = { "undeclared" } },
  advertise = { "nope" },
}
