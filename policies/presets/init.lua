-- presets -- policy templates: `local presets = require "presets"`.
--
-- Each preset is a function that takes a table of options and returns an
-- ordinary policy table (docs/policy.md), so a policy can start from a
-- well-known scope design and still say anything a hand-written policy can:
--
--   local presets = require "presets"
--   local p = presets.read_write{ prefix = "journal", read = { "list_entries" }, ... }
--   p.tools.ping = "public"          -- extend or override the result
--   return p
--
-- The options every preset accepts besides its own: realm, resource,
-- authorization_servers, advertise, and tools / resources / prompts /
-- methods / scopes / implies tables that are merged over what the preset
-- generates (an explicit rule always wins). Bad options raise an error that
-- points at the line of the policy that called the preset.
--
-- Shipped with scopegate: policies/presets in the source tree,
-- <prefix>/share/scopegate/lua/presets when installed.

local M = {}

local COMMON = {
  realm = true, resource = true, authorization_servers = true, advertise = true,
  tools = true, resources = true, prompts = true, methods = true, scopes = true,
  implies = true, default = true,
}

-- Validation raises a marked error; preset() turns it into
-- "presets.NAME: message" located at the policy line that called the preset.
local Problem = {}

local function fail(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Problem), 0)
end

local function preset(name, build)
  return function(opts)
    local ok, result = pcall(build, opts)
    if ok then return result end
    if getmetatable(result) == Problem then
      error("presets." .. name .. ": " .. result.message, 2)
    end
    error(result, 0)
  end
end

local function check_options(opts, own, skip_common)
  if type(opts) ~= "table" then
    fail("expected a table of options, got %s", type(opts))
  end
  for k in pairs(opts) do
    local common = COMMON[k] and not (skip_common and skip_common[k])
    if type(k) ~= "string" or not (common or own[k]) then
      local names = {}
      for o in pairs(own) do names[#names + 1] = o end
      table.sort(names)
      fail("unknown option %s (expected %s, or one of the policy keys)",
        type(k) == "string" and '"' .. k .. '"' or tostring(k), table.concat(names, ", "))
    end
  end
end

local function check_string(opts, key, required)
  local v = opts[key]
  if v == nil and not required then return nil end
  if type(v) ~= "string" or v == "" then
    fail("%s must be a non-empty string", key)
  end
  if v:find('[%s"\\]') then
    fail("%s must not contain spaces, quotes or backslashes (it becomes part of scope names)", key)
  end
  return v
end

-- A plain list of non-empty strings (or nil when absent and optional).
local function check_list(where, list)
  if list == nil then return {} end
  if type(list) ~= "table" then
    fail("%s must be a list of names, got %s", where, type(list))
  end
  local n = #list
  for k, v in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail("%s must be a plain list of names (found key %s)", where, tostring(k))
    end
    if type(v) ~= "string" or v == "" then
      fail("%s[%d] must be a non-empty string", where, k)
    end
  end
  return list
end

-- Assigns rule to every name of list in t; a name already given by this
-- preset is an error (it would be ambiguous which scope it needs).
local function assign(t, list, rule, where, seen)
  for _, item in ipairs(list) do
    if seen[item] then
      fail('"%s" is listed in both %s and %s', item, seen[item], where)
    end
    seen[item] = where
    t[item] = rule
  end
end

-- The policy: generated keys, then the author's common keys over them.
local function finish(policy, opts, skip)
  for _, k in ipairs { "realm", "resource", "authorization_servers", "advertise", "default" } do
    if opts[k] ~= nil then policy[k] = opts[k] end
  end
  for _, k in ipairs { "tools", "resources", "prompts", "methods", "scopes", "implies" } do
    if opts[k] ~= nil and not (skip and skip[k]) then
      if type(opts[k]) ~= "table" then fail("%s must be a table, got %s", k, type(opts[k])) end
      policy[k] = policy[k] or {}
      for key, v in pairs(opts[k]) do policy[k][key] = v end
    end
  end
  return policy
end

local LIST_METHODS = { "tools/list", "prompts/list", "resources/list", "resources/templates/list" }

--- catch_all{ scope = "mcp", description = "..." }
-- One scope for every message: the simplest start.
M.catch_all = preset("catch_all", function(opts)
  check_options(opts, { scope = true, description = true })
  local scope = check_string(opts, "scope", true)
  local description = opts.description or "Use this MCP server"
  if type(description) ~= "string" then fail("description must be a string") end
  return finish({
    scopes = { [scope] = description },
    tools = {}, resources = {}, prompts = {}, methods = {},
    default = scope,
  }, opts)
end)

--- read_write{ prefix = "journal", read = {...}, write = {...}, admin = {...} }
-- <prefix>:read, <prefix>:write (implies read), <prefix>:admin (implies
-- write); the lists name tools; listing needs <prefix>:read; anything not
-- named is denied.
M.read_write = preset("read_write", function(opts)
  check_options(opts, { prefix = true, read = true, write = true, admin = true })
  local prefix = check_string(opts, "prefix", true)
  local read, write, admin = prefix .. ":read", prefix .. ":write", prefix .. ":admin"
  local tools, seen = {}, {}
  assign(tools, check_list("read", opts.read), read, "read", seen)
  assign(tools, check_list("write", opts.write), write, "write", seen)
  assign(tools, check_list("admin", opts.admin), admin, "admin", seen)
  local methods = {}
  for _, m in ipairs(LIST_METHODS) do methods[m] = read end
  return finish({
    scopes = {
      [read] = "Read " .. prefix,
      [write] = "Change " .. prefix .. " (includes read)",
      [admin] = "Administer " .. prefix .. " (includes write)",
    },
    implies = { [admin] = { write }, [write] = { read } },
    tools = tools, resources = {}, prompts = {}, methods = methods,
    default = "deny",
  }, opts)
end)

--- per_resource{ prefix = "journal", resources = {
--     entries = { read = {tools}, write = {tools}, uris = {URIs or patterns},
--                 prompts = {names} },
--     tags = { ... } } }
-- One <prefix>:<family>:read / :write pair per resource family (without a
-- prefix: <family>:read); write implies read. The MCP resources (uris) and
-- prompts of a family need its read scope. Anything not named is denied.
-- Here `resources` is the family table; add MCP resource rules to the
-- returned policy's `resources` (or list them under a family's uris).
local FAMILY_KEYS = { read = true, write = true, uris = true, prompts = true }

M.per_resource = preset("per_resource", function(opts)
  check_options(opts, { prefix = true, resources = true }, { resources = true })
  local prefix = check_string(opts, "prefix", false)
  local families = opts.resources
  if type(families) ~= "table" or next(families) == nil then
    fail("resources must be a table { family = { read = {...}, write = {...}, uris = {...}, prompts = {...} } }")
  end
  local names = {}
  for family, spec in pairs(families) do
    if type(family) ~= "string" or not family:match("^[%w_%-%.]+$") then
      fail("resource family names must be words like entries or tags, not %s", tostring(family))
    end
    if type(spec) ~= "table" then
      fail("resources.%s must be a table { read = ..., write = ..., uris = ..., prompts = ... }", family)
    end
    for k in pairs(spec) do
      if not FAMILY_KEYS[k] then
        fail('resources.%s: unknown key "%s" (expected read, write, uris or prompts)', family, tostring(k))
      end
    end
    names[#names + 1] = family
  end
  table.sort(names)
  local policy = { scopes = {}, implies = {}, tools = {}, resources = {}, prompts = {},
                   methods = {}, default = "deny" }
  local seen_tools, seen_uris, seen_prompts = {}, {}, {}
  for _, family in ipairs(names) do
    local spec, where = families[family], "resources." .. family
    local base = prefix and (prefix .. ":" .. family) or family
    local read, write = base .. ":read", base .. ":write"
    local reads = check_list(where .. ".read", spec.read)
    local writes = check_list(where .. ".write", spec.write)
    local uris = check_list(where .. ".uris", spec.uris)
    local prompts = check_list(where .. ".prompts", spec.prompts)
    -- A family with nothing to read gets no read scope: a scope that no
    -- rule requires is only something for users to consent to for nothing.
    local readable = #reads + #uris + #prompts > 0
    if readable then policy.scopes[read] = "Read " .. family end
    if #writes > 0 then
      policy.scopes[write] = readable and ("Change " .. family .. " (includes read)")
                             or ("Change " .. family)
      if readable then policy.implies[write] = { read } end
    end
    assign(policy.tools, reads, read, where .. ".read", seen_tools)
    assign(policy.tools, writes, write, where .. ".write", seen_tools)
    assign(policy.resources, uris, read, where .. ".uris", seen_uris)
    assign(policy.prompts, prompts, read, where .. ".prompts", seen_prompts)
  end
  return finish(policy, opts, { resources = true })
end)

--- by_annotations{ prefix = "journal" }
-- <prefix>:tools:read, <prefix>:tools:write (implies read), <prefix>:admin
-- (implies write). A tool is classified by the MCP annotations the gateway
-- learned from the upstream (req.annotations): readOnlyHint == true -> read,
-- else destructiveHint == false -> write, else admin (destructiveHint
-- defaults to true in the MCP specification). A tool whose
-- annotations are not known is denied, never guessed. This is the policy's
-- `default` rule, so an explicit tools[name] always wins. Prompts,
-- resources and other methods are denied unless named (or `other` says).
M.by_annotations = preset("by_annotations", function(opts)
  check_options(opts, { prefix = true, other = true })
  local prefix = check_string(opts, "prefix", true)
  local read, write, admin = prefix .. ":tools:read", prefix .. ":tools:write", prefix .. ":admin"
  local other = opts.other
  if other == nil then other = "deny" end
  if type(other) == "function" or type(other) == "boolean" and other then
    fail("other must be a static requirement (a scope, \"deny\", { any_of = ... })")
  end
  local function classify(req)
    if req.method ~= "tools/call" then return other end
    local a = req.annotations
    if a == nil then
      return { deny = "tool not classified yet: the gateway has not seen its annotations in the upstream's tools/list" }
    end
    if a.readOnlyHint == true then return read end
    -- The MCP specification's default for destructiveHint is true: only a
    -- tool that says destructiveHint = false is a plain writer.
    if a.destructiveHint == false then return write end
    return admin
  end
  return finish({
    scopes = {
      [read] = "Use the read-only tools of " .. prefix,
      [write] = "Use the tools that change " .. prefix .. " (includes read)",
      [admin] = "Use the destructive tools of " .. prefix .. " (includes write)",
    },
    implies = { [admin] = { write }, [write] = { read } },
    tools = {}, resources = {}, prompts = {}, methods = {},
    default = classify,
    -- tools/call carries no annotations: the gateway learns them from the
    -- upstream's tools/list (docs/policy.md, "Tool annotations").
    tool_annotations = "upstream",
  }, opts)
end)

return M
