-- tests/fixtures/policies/hostile.lua -- rules that try to escape or wreck
-- the sandbox; sandbox_spec.lua runs each one on the same state and checks
-- that it is denied with file:line and that the next request still works.
return {
  scopes = { ["demo:read"] = "Read things" },
  tools = {
    ok = "demo:read",
    os_execute = function(req)
      os.execute("touch /tmp/scopegate-pwned")
      return "public"
    end,
    io_open = function(req)
      local f = io.open("/etc/passwd")
      return "public"
    end,
    load_bytecode = function(req)
      local f = assert(load("\27LuaT\0\25\147\13\10\26\10\4\8\8xV\0\0\0\0\0\0\0\0\0\0\0(w@"))
      return "public"
    end,
    debug_lib = function(req)
      debug.sethook()
      return "public"
    end,
    string_dump = function(req)
      local s = string.dump(function() end)
      return "public"
    end,
    spin = function(req)
      while true do end
    end,
    spin_pcall = function(req)
      while true do
        pcall(function() while true do end end)
      end
    end,
    swallow_budget = function(req)
      local caught = pcall(function() while true do end end)
      return "public"
    end,
    memory_bomb = function(req)
      local s = "x"
      local keep = {}
      while true do
        s = s .. s
        keep[#keep + 1] = s
      end
    end,
    swallow_memory = function(req)
      local caught = pcall(function()
        local s = "y"
        while true do s = s .. s end
      end)
      return "public"
    end,
    table_bomb = function(req)
      local t = {}
      for i = 1, 1e9 do t[i] = { i } end
    end,
    evil_pattern = function(req)
      local found = ("a"):rep(30):find(("a*"):rep(9) .. "b")
      return "public"
    end,
    evil_gmatch = function(req)
      for w in ("a"):rep(40):gmatch("a-a-a-a-a-a-b") do end
      return "public"
    end,
    mutate_string = function(req)
      string.upper = function() return "pwned" end
      return "public"
    end,
    mutate_string_meta = function(req)
      getmetatable("").__index = { upper = function() return "pwned" end }
      return "public"
    end,
    set_global = function(req)
      counter = (counter or 0) + 1
      return "public"
    end,
    rawset_global = function(req)
      rawset(_G, "counter", 1)
      return "public"
    end,
    empty_rep = function(req)
      local s = string.rep("", 1e12)
      return s == "" and "demo:read" or "public"
    end,
    table_move = function(req)
      table.move({}, 1, 1e12, 1, {})
      return "public"
    end,
    gc_finalizer = function(req)
      setmetatable({}, { __gc = function() while true do end end })
      return "public"
    end,
    chatty = function(req)
      print("deciding", req.name, 42)
      return "demo:read"
    end,
    upper_works = function(req)
      -- string functions are intact (another rule tried to replace them)
      return ("demo:read"):upper() == "DEMO:READ" and "demo:read" or "public"
    end,
  },
  default = "deny",
}
