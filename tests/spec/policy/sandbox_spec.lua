-- tests/spec/policy/sandbox_spec.lua -- the confined Lua state policies run in.
-- Each hostile rule in tests/fixtures/policies/hostile.lua must be denied
-- (fail closed, error text with file:line), stay within the per-call budgets
-- (50 ms, 8 MiB) and leave the same state deciding the next request normally.
local pt = require "policytest"
local procs = require "procs"
local core = pt.core

local HOSTILE = "tests/fixtures/policies/hostile.lua"
local MiB = 1024 * 1024
-- Budget-stopped calls also pay for the collection after the failure; on a
-- shared 2-core machine under ASan we allow that much on top of 50 ms.
local CLEANUP_SLACK = 0.05

describe("policy sandbox", function()
  local p

  setup(function()
    p = assert(core.policy_load(HOSTILE))
  end)
  teardown(function()
    p:close()
  end)

  local function decide(name)
    return pt.timed(function()
      return p:decide { method = "tools/call", name = name }
    end)
  end

  local function next_request_is_normal()
    local ok = p:decide { method = "tools/call", name = "ok" }
    assert.equal("tools.ok", ok.rule)
    assert.equal('"demo:read"', ok.requirement)
    assert.is_nil(ok.error)
  end

  -- Runs tools.<name>, checks it failed closed with message `pattern` located
  -- at the line of `at`, within time_limit seconds and the memory cap.
  local function contained(name, at, pattern, time_limit)
    local d, dt = decide(name)
    assert.equal("false", d.requirement)
    assert.equal("tools." .. name, d.rule)
    assert.equal(pt.line_of(HOSTILE, name .. " = function"), d.line)
    local prefix = HOSTILE .. ":" .. pt.line_of(HOSTILE, at) .. ": tools." .. name .. ": "
    assert.equal(prefix, d.error:sub(1, #prefix))
    assert.matches(pattern, d.error:sub(#prefix + 1))
    assert.is_true(dt < (time_limit or 0.05), name .. " took " .. dt .. " s")
    local st = p:stats()
    assert.is_true(st.peak - st.baseline <= 8 * MiB, name .. " grew the state by " .. (st.peak - st.baseline))
    next_request_is_normal()
    return d
  end

  it("has no os.execute", function()
    contained("os_execute", 'os.execute("touch', "attempt to call a nil value %(field 'execute'%)")
  end)

  it("has no io", function()
    contained("io_open", "io.open(", "attempt to index a nil value %(global 'io'%)")
  end)

  it("refuses bytecode in load", function()
    contained("load_bytecode", "assert(load(", "^load: binary chunks are not allowed in policies")
  end)

  it("has no debug library", function()
    contained("debug_lib", "debug.sethook", "attempt to index a nil value %(global 'debug'%)")
  end)

  it("has no string.dump", function()
    contained("string_dump", "string.dump(", "attempt to call a nil value %(field 'dump'%)")
  end)

  it("stops while true do end with the instruction budget", function()
    contained("spin", "while true do end", "^instruction budget exceeded %(1000000 instructions%)$")
  end)

  it("stops a loop around pcall", function()
    contained("spin_pcall", "pcall(function() while true do end end)",
      "^instruction budget exceeded %(1000000 instructions%)$")
  end)

  it("does not let pcall swallow a budget overrun", function()
    contained("swallow_budget", "local caught = pcall(",
      "^instruction budget exceeded")
  end)

  it("stops a memory bomb at the 8 MiB cap", function()
    contained("memory_bomb", "memory_bomb = function", "^memory limit exceeded %(8192 KiB per call%)$")
  end)

  it("does not let pcall swallow a memory overrun", function()
    contained("swallow_memory", "swallow_memory = function", "^memory limit exceeded")
  end)

  it("stops a bomb of small tables (slower to build and to collect)", function()
    -- Its own state with a long clock: building 8 MiB of small tables takes
    -- about 10 ms, but under ASan it can pass the 50 ms time budget first,
    -- and this case is about the memory cap.
    local q = assert(core.policy_load(HOSTILE, { time_ms = 5000 }))
    local d, dt = pt.timed(function()
      return q:decide { method = "tools/call", name = "table_bomb" }
    end)
    assert.equal("false", d.requirement)
    local prefix = HOSTILE .. ":" .. pt.line_of(HOSTILE, "table_bomb = function") .. ": tools.table_bomb: "
    assert.equal(prefix .. "memory limit exceeded (8192 KiB per call)", d.error)
    assert.is_true(dt < 1, "table_bomb took " .. dt .. " s")
    local st = q:stats()
    assert.is_true(st.peak - st.baseline <= 8 * MiB, "grew the state by " .. (st.peak - st.baseline))
    assert.equal('"demo:read"', q:decide { method = "tools/call", name = "ok" }.requirement)
    q:close()
  end)

  it("refuses a pathological pattern before running it", function()
    contained("evil_pattern", '("a"):rep(30):find', "^string%.find: pattern too expensive for a policy")
    contained("evil_gmatch", ':gmatch("a-a-a-a', "^string%.gmatch: pattern too expensive")
  end)

  it("keeps the string library read-only", function()
    contained("mutate_string", "string.upper = function",
      "^attempt to modify read%-only table 'string' %(key 'upper'%)$")
    contained("mutate_string_meta", 'getmetatable("").__index', "attempt to index a boolean value")
    -- and string methods still work in the next rule
    local d = p:decide { method = "tools/call", name = "upper_works" }
    assert.equal('"demo:read"', d.requirement)
  end)

  it("refuses to let a rule set a global", function()
    for _ = 1, 2 do
      contained("set_global", "counter = (counter or 0) + 1",
        "^policy rules may not set globals %(counter%)$")
    end
    contained("rawset_global", "rawset(_G", "attempt to call a nil value %(global 'rawset'%)")
  end)

  it("bounds C loops that hooks cannot interrupt", function()
    local d, dt = decide("empty_rep")
    assert.equal('"demo:read"', d.requirement)
    assert.is_true(dt < 0.05)
    contained("table_move", "table.move(", "^table%.move: too many elements")
    contained("gc_finalizer", "setmetatable({}, { __gc", "^setmetatable: __gc finalizers are not allowed")
  end)

  it("collects the garbage of failed calls", function()
    for _ = 1, 3 do decide("memory_bomb") end
    local st = p:stats()
    assert.is_true(st.memory - st.baseline < 256 * 1024, "state kept " .. (st.memory - st.baseline))
    next_request_is_normal()
  end)

  it("stops a loop with the wall clock when the instruction budget is huge", function()
    local q = assert(core.policy_load(HOSTILE, { instructions = 1e15 }))
    local d, dt = pt.timed(function()
      return q:decide { method = "tools/call", name = "spin" }
    end)
    assert.equal("false", d.requirement)
    assert.matches(": tools%.spin: time budget exceeded %(50 ms%)$", d.error)
    assert.is_true(dt >= 0.045 and dt < 0.05 + CLEANUP_SLACK, "took " .. dt)
    local ok = q:decide { method = "tools/call", name = "ok" }
    assert.equal('"demo:read"', ok.requirement)
    q:close()
  end)

  it("honours configured limits", function()
    local q = assert(core.policy_load(HOSTILE, { instructions = 10000, memory = 1024 * 1024 }))
    assert.same({ instructions = 10000, memory = 1024 * 1024, time_ms = 50,
                  load_memory = 64 * MiB, pattern_steps = 10000000 }, q:info().limits)
    assert.matches("instruction budget exceeded %(10000 instructions%)$",
      q:decide { method = "tools/call", name = "spin" }.error)
    assert.matches("memory limit exceeded %(1024 KiB per call%)$",
      q:decide { method = "tools/call", name = "memory_bomb" }.error)
    local st = q:stats()
    assert.is_true(st.peak - st.baseline <= 1024 * 1024)
    q:close()
  end)
end)

describe("C library work (the byte budget)", function()
  -- tests/fixtures/policies/cwork.lua: rules whose C library calls grow with
  -- the caller's arguments. Without a byte budget each ran to the 50 ms time
  -- budget, or past it (string.rep 90 ms, gsub 130 ms: a C call cannot be
  -- interrupted); now each is refused within a few milliseconds.
  local CWORK = "tests/fixtures/policies/cwork.lua"
  -- The attacks below stop in ~2 ms (ASan+UBSan: ~5 times that); room for a
  -- loaded machine. Unstopped, each would build gigabytes for seconds.
  local FAST = procs.sanitizer and 0.06 or 0.015
  local p
  setup(function() p = assert(core.policy_load(CWORK)) end)
  teardown(function() p:close() end)

  local function args(t)
    local parts = {}
    for k, v in pairs(t) do
      parts[#parts + 1] = string.format("%q:%s", k, type(v) == "string" and string.format("%q", v) or tostring(v))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  local long = ("a"):rep(60000) -- within the 64 KiB arguments limit

  local function decide(name, a)
    return pt.timed(function()
      return p:decide { method = "tools/call", name = name, arguments_json = args(a) }
    end)
  end

  -- tools.<name> with a long string repeated n times must be refused by
  -- `fname` at the line holding `at`, quickly, and the next call is normal.
  local function refused(name, fname, at, width)
    -- the fastest of three runs: the machine is shared, the bound is ours
    local d, dt = decide(name, { s = long, n = 100000, width = width or 64 })
    for _ = 1, 2 do
      local d2, dt2 = decide(name, { s = long, n = 100000, width = width or 64 })
      assert.equal(d.error, d2.error)
      dt = math.min(dt, dt2)
    end
    assert.equal("false", d.requirement)
    local prefix = CWORK .. ":" .. pt.line_of(CWORK, at) .. ": tools." .. name .. ": "
    assert.equal(prefix, (d.error or ""):sub(1, #prefix), d.error)
    assert.matches("^" .. fname .. ": too much work for a policy %(about %d+ bytes to read or write, %d+ left of this call's byte budget of 1048576%)",
      d.error:sub(#prefix + 1))
    assert.is_true(dt < FAST, name .. " took " .. dt .. " s")
    local ok = p:decide { method = "tools/call", name = "sub", arguments_json = args { s = "xyz", n = 3 } }
    assert.equal('"demo:read"', ok.requirement)
    assert.is_nil(ok.error)
  end

  it("stops string.rep", function() refused("rep", "string%.rep", "a.s:rep(") end)
  it("stops gsub replacement work", function() refused("gsub", "string%.gsub", 'a.s:gsub(".", "%0%0")') end)
  it("stops string.format", function() refused("format", "string%.format", 'string.format("%s|%s|%q"') end)
  it("stops table.concat", function() refused("concat", "table%.concat", "table.concat(parts") end)
  it("stops upper/lower/reverse", function()
    refused("upper", "string%.%l+", "a.s:upper()")
  end)
  it("stops load of generated source", function() refused("load", "load", "load((", 1) end)
  it("stops utf8 functions", function() refused("utf8", "utf8%.len", "utf8.len(a.s)") end)
  it("stops tostring of huge things", function() refused("tostring", "tostring", "tostring(t) ..") end)
  it("stops string.sub copies", function() refused("sub", "string%.sub", "a.s:sub(2)") end)

  it("stops one gsub when its matches run out of budget", function()
    local q = assert(core.policy_load(CWORK, { bytes = 100000 }))
    local d = q:decide { method = "tools/call", name = "gsub", arguments_json = args { s = ("b"):rep(2000), n = 1 } }
    assert.matches("tools%.gsub: string%.gsub: too much work for a policy %(about %d+ bytes to read or write, %d+ left of this call's byte budget of 100000%)", d.error)
    -- small work passes under the same budget
    d = q:decide { method = "tools/call", name = "gsub", arguments_json = args { s = ("b"):rep(100), n = 3 } }
    assert.equal('"demo:read"', d.requirement)
    q:close()
  end)

  it("honours a configured byte budget", function()
    local q = assert(core.policy_load(CWORK, { bytes = 1000 }))
    local d = q:decide { method = "tools/call", name = "rep", arguments_json = args { s = "ab", n = 1, width = 600 } }
    assert.matches("string%.rep: too much work for a policy %(about 1200 bytes to read or write, 1000 left of this call's byte budget of 1000%)", d.error)
    d = q:decide { method = "tools/call", name = "rep", arguments_json = args { s = "ab", n = 1, width = 400 } }
    assert.equal('"demo:read"', d.requirement)
    q:close()
  end)

  it("does not charge what does not grow with the arguments", function()
    local dir = pt.tmpdir()
    local path = pt.write(dir, "p.lua", [[
return { scopes = { ["a:b"] = "x" }, tools = { busy = function(req)
  local t = {}
  for i = 1, 5000 do t[#t + 1] = ("%d"):format(i) end    -- short strings, appends
  while #t > 0 do table.remove(t) end                     -- pops at the end
  for i = 1, 5000 do local _ = ("abc"):upper() .. #t end
  return "a:b"
end } }
]])
    local q = assert(core.policy_load(path))
    local d = q:decide { method = "tools/call", name = "busy" }
    q:close()
    pt.rmdir(dir)
    assert.equal('"a:b"', d.requirement, d.error)
  end)

  it("gives every call its own budget", function()
    for _ = 1, 20 do
      local d = p:decide { method = "tools/call", name = "rep", arguments_json = args { s = long, n = 15, width = 1 } }
      assert.equal('"demo:read"', d.requirement, d.error)
    end
  end)

  it("refuses arguments larger than the limit before the rule runs", function()
    local d, dt = decide("depth", { s = ("a"):rep(70000) })
    assert.equal("false", d.requirement)
    assert.matches("^" .. CWORK .. ":%d+: tools%.depth: req%.arguments is larger than a policy accepts %(more than 65536 bytes", d.error)
    assert.is_true(dt < FAST, "took " .. dt)
    d = decide("depth", { s = ("a"):rep(60000), t = "x" })
    assert.equal('"demo:read"', d.requirement)
    -- many small values count 8 bytes each
    local many = {}
    for i = 1, 9000 do many[i] = "1" end
    d = p:decide { method = "tools/call", name = "depth", arguments_json = '{"a":[' .. table.concat(many, ",") .. "]}" }
    assert.matches("req%.arguments is larger than a policy accepts", d.error)
  end)

  it("refuses arguments nested deeper than the limit", function()
    local deep = function(n) return '{"a":' .. ("["):rep(n - 1) .. ("]"):rep(n - 1) .. "}" end
    local d = p:decide { method = "tools/call", name = "depth", arguments_json = deep(17) }
    assert.matches("tools%.depth: req%.arguments is nested deeper than a policy accepts %(more than 16 levels", d.error)
    d = p:decide { method = "tools/call", name = "depth", arguments_json = deep(16) }
    assert.equal('"demo:read"', d.requirement, d.error)
  end)

  it("honours configured argument limits", function()
    local q = assert(core.policy_load(CWORK, { arguments_bytes = 100, arguments_depth = 2 }))
    local d = q:decide { method = "tools/call", name = "depth", arguments_json = args { s = ("a"):rep(100) } }
    assert.matches("more than 100 bytes", d.error)
    d = q:decide { method = "tools/call", name = "depth", arguments_json = '{"a":[[1]]}' }
    assert.matches("more than 2 levels", d.error)
    d = q:decide { method = "tools/call", name = "depth", arguments_json = '{"a":[1]}' }
    assert.equal('"demo:read"', d.requirement)
    q:close()
  end)
end)

describe("policy print", function()
  it("writes to the gateway log, prefixed with the policy file", function()
    local dir = pt.tmpdir()
    local script = pt.write(dir, "run.lua", ([[
      local core = require "scopegate.core"
      local p = assert(core.policy_load(%q))
      io.write(p:decide { method = "tools/call", name = "chatty" }.requirement, "\n")
      p:close()
    ]]):format(HOSTILE))
    local f = assert(io.popen("lua5.4 '" .. script .. "' 2>&1"))
    local out = f:read("a")
    f:close()
    pt.rmdir(dir)
    assert.matches('"demo:read"\n', out, 1, true)
    assert.matches(" info " .. HOSTILE .. ": deciding\tchatty\t42\n", out, 1, true)
  end)
end)

describe("policy sandbox at load time", function()
  local dir
  before_each(function() dir = pt.tmpdir() end)
  after_each(function() pt.rmdir(dir) end)

  it("stops a policy file that never returns", function()
    local path = pt.write(dir, "loop.lua", "local x = 0\nwhile true do x = x + 1 end\nreturn {}\n")
    local p, err = core.policy_load(path, { load_instructions = 100000 })
    assert.is_nil(p)
    assert.equal(path .. ":2: instruction budget exceeded (100000 instructions)", err)
  end)

  it("refuses a policy file that mutates string", function()
    local path = pt.write(dir, "mut.lua", "string.lower = string.upper\nreturn {}\n")
    local p, err = core.policy_load(path)
    assert.is_nil(p)
    assert.equal(path .. ":1: attempt to modify read-only table 'string' (key 'lower')", err)
  end)

  it("refuses a memory bomb at load with the load cap", function()
    local path = pt.write(dir, "big.lua", "local s = 'x'\nwhile true do s = s .. s end\n")
    local p, err = core.policy_load(path, { load_memory = 16 * MiB })
    assert.is_nil(p)
    assert.equal(path .. ": memory limit exceeded (16384 KiB while loading)", err)
  end)

  it("does not count earlier calls' garbage against a large policy's per-call cap", function()
    -- 12 MiB of policy data, then rules that each leave ~200 KiB of garbage:
    -- 300 calls make far more garbage than one call's 8 MiB allowance. The
    -- cap counts from the post-load size, so this relies on Lua collecting
    -- (and retrying) when the capping allocator refuses.
    local path = pt.write(dir, "large.lua", [[
local blob = {}
for i = 1, 12 * 1024 do blob[i] = ("x"):rep(1000) .. i end
return {
  scopes = { ["big:read"] = "r" },
  tools = {
    churn = function(req)
      local t = {}
      for i = 1, 2000 do t[i] = { i, i * 2 } end
      return #blob > 0 and "big:read" or false
    end,
  },
}
]])
    -- A generous clock: this case is about memory. What it shows about time
    -- is that no call ends up paying for a full collection of the 12 MiB
    -- heap: the garbage is collected between calls once it passes half the
    -- allowance, so the state never comes near its cap.
    local p = assert(core.policy_load(path, { time_ms = 5000 }))
    local most = 0
    for i = 1, 300 do
      local d = p:decide { method = "tools/call", name = "churn" }
      assert.is_nil(d.error, "call " .. i .. ": " .. tostring(d.error))
      assert.equal('"big:read"', d.requirement)
      local st = p:stats()
      most = math.max(most, st.memory - st.baseline)
    end
    assert.is_true(most < 5 * MiB, "garbage kept between calls: " .. most)
    p:close()
  end)

  it("lets the policy file set globals, which rules then read", function()
    local path = pt.write(dir, "g.lua", [[
PREFIX = "demo"
function scope_for(verb) return PREFIX .. ":" .. verb end
return {
  scopes = { ["demo:read"] = "r", ["demo:write"] = "w" },
  tools = {
    read = function(req) return scope_for("read") end,
    write = function(req) return scope_for(req.name == "write" and "write" or "read") end,
  },
}
]])
    local p = assert(core.policy_load(path))
    assert.equal('"demo:read"', p:decide { method = "tools/call", name = "read" }.requirement)
    assert.equal('"demo:write"', p:decide { method = "tools/call", name = "write" }.requirement)
    p:close()
  end)

  it("offers safe libraries and text load", function()
    local path = pt.write(dir, "libs.lua", [[
local checks = {
  os_time = type(os.time()) == "number",
  os_date = type(os.date("!%Y")) == "string",
  no_os_getenv = os.getenv == nil,
  no_os_remove = os.remove == nil,
  no_io = io == nil,
  no_package = package == nil,
  no_collectgarbage = collectgarbage == nil,
  no_dofile = dofile == nil and loadfile == nil,
  no_coroutine = coroutine == nil,
  text_load = load("return 1 + 1")() == 2,
  load_env = load("return x", "=chunk", "t", { x = 7 })() == 7,
  binary_mode_refused = select(2, load("return 1", "=c", "b")) ~= nil,
  string_meta_hidden = getmetatable("") == false,
  utf8 = utf8.len("héllo") == 5,
  math = math.max(1, 2) == 2,
  table_sort = (function() local t = { 3, 1, 2 } table.sort(t) return t[1] == 1 end)(),
  patterns = ("read_entry"):match("^(%w+)_entry$") == "read",
  plain_find = ("x"):rep(100000):find("needle", 1, true) == nil,
  pairs_string = (function() for k in pairs(string) do if k == "format" then return true end end end)(),
}
local failed = {}
for k, v in pairs(checks) do if v ~= true then failed[#failed + 1] = k end end
table.sort(failed)
FAILED = table.concat(failed, ",")
return { tools = { t = function(req) return FAILED == "" and "public" or { deny = FAILED } end } }
]])
    local p = assert(core.policy_load(path))
    local d = p:decide { method = "tools/call", name = "t" }
    assert.same({ requirement = '"public"' }, { requirement = d.requirement, why = d.why })
    p:close()
  end)
end)

describe("pattern cost model", function()
  it("rates catastrophic backtracking far above the budget", function()
    assert.is_true(core.policy_pattern_cost(("a*"):rep(9) .. "b", 30) > 1e12)
    assert.is_true(core.policy_pattern_cost("a*a*b", 1000) > 1e8)
  end)
  it("rates everyday patterns as cheap", function()
    assert.is_true(core.policy_pattern_cost("^(%w+):(.*)$", 10000) < 1e5)
    assert.is_true(core.policy_pattern_cost("[%w_]+", 10000) < 1e5)
    assert.is_true(core.policy_pattern_cost("^%s*(.-)%s*$", 1000) < 1e7)
    assert.is_true(core.policy_pattern_cost("^repo:([%w_-]+):(%a+)$", 1000) < 1e5)
  end)
  it("treats ^ as a literal when anchoring is not possible (gmatch)", function()
    assert.is_true(core.policy_pattern_cost("^ab", 100, false) > core.policy_pattern_cost("^ab", 100, true))
  end)
end)
