-- scopegate.testing -- policy tests in busted (or any Lua 5.4 test runner).
--
-- For authors who prefer busted to `scopegate test`: thin functions over
-- the C module scopegate.core, so a decision here is the gateway's decision
-- (policy:evaluate runs sg_bridge_decide; policy:visible runs the gateway's
-- tools/list filter).
--
--   local testing = require "scopegate.testing"
--   local t = testing.load("policies/examples/read_write.lua")
--   local r = t:decide{ tool = "create_entry", arguments = { title = "x" },
--                       scopes = { "journal:read" } }
--   assert.equal("403", r.outcome)
--   assert.same({ "journal:read", "journal:write" }, r.challenge)
--   assert.same({ "list_entries" }, t:visible_tools(tools, { "journal:read" }))
--
-- Needs scopegate.core on package.cpath: build/lua/?.so in a build tree,
-- <prefix>/lib/scopegate/lua/?.so when installed; this file is in lua/ in
-- the source tree and <prefix>/share/scopegate/lua when installed.
local core = require "scopegate.core"

local M = {}
local Policy = {}
Policy.__index = Policy

--- testing.load(path [, { upstream_tools = {...}, public_url = ... }]) -> policy
-- Raises the loader's file:line errors when the policy does not load.
function M.load(path, opts)
  opts = opts or {}
  local p, err = core.policy_load(path)
  if not p then error(err, 2) end
  local annotations = {}
  for _, tool in ipairs(opts.upstream_tools or {}) do
    annotations[tool.name] = tool.annotations
  end
  return setmetatable({ policy = p, path = path, public_url = opts.public_url,
                        upstream_tools = opts.upstream_tools or {},
                        annotations = annotations }, Policy)
end

-- The claims of a case: { scopes = {...} }, { claims = {...} } or neither.
local function claims_of(c)
  if c.scopes and c.claims then error("give scopes or claims, not both", 3) end
  if c.scopes then return { sub = "scopegate-test", scope = table.concat(c.scopes, " ") } end
  return c.claims
end

-- The JSON-RPC message of a case (same shorthands as `scopegate test`).
local function message_of(c)
  if c.message then return c.message end
  if c.tool then
    return { jsonrpc = "2.0", id = 1, method = "tools/call",
             params = { name = c.tool, arguments = c.arguments or {} } }
  elseif c.prompt then
    return { jsonrpc = "2.0", id = 1, method = "prompts/get",
             params = { name = c.prompt, arguments = c.arguments or {} } }
  elseif c.resource then
    return { jsonrpc = "2.0", id = 1, method = "resources/read", params = { uri = c.resource } }
  elseif c.method then
    return { jsonrpc = "2.0", id = 1, method = c.method, params = c.params }
  end
  error("give one of tool, prompt, resource, method or message", 3)
end

--- t:decide{ tool= | prompt= | resource= | method= [params=] | message=,
--            arguments=, annotations=, scopes= | claims=, protocol_version= }
-- -> { outcome = "allow"|"401"|"403"|"deny"|"400", challenge = {scopes},
--      rule=, file=, line=, requirement=, error=, message=, www_authenticate=,
--      decisions = { one per message of a batch } }
-- annotations (for a tool) default to those of the tool in upstream_tools.
function Policy:decide(c)
  local annotations = self.annotations
  if c.tool and c.annotations ~= nil then
    annotations = {}
    for k, v in pairs(self.annotations) do annotations[k] = v end
    annotations[c.tool] = c.annotations or nil
  end
  local r = self.policy:evaluate {
    message = message_of(c),
    claims = claims_of(c),
    annotations = next(annotations) and annotations or nil,
    protocol_version = c.protocol_version,
    public_url = self.public_url,
  }
  local first = r.decisions and r.decisions[1] or {}
  return {
    outcome = r.outcome,
    challenge = r.challenge and r.scope or nil,
    www_authenticate = r.challenge,
    message = r.message,
    rule = first.rule, file = first.file, line = first.line,
    requirement = first.requirement, error = first.error,
    decisions = r.decisions,
  }
end

--- t:visible_tools([tools,] scopes_or_claims) -> sorted list of tool names
-- The tools of a tools/list result (default: upstream_tools given to load)
-- that a caller with these scopes (a list) or claims (a table with string
-- keys; nil for no token) is shown, as the gateway filters the list.
function Policy:visible_tools(tools, caller)
  if caller == nil and tools ~= nil and type(tools[1]) == "string" then
    tools, caller = nil, tools
  end
  tools = tools or self.upstream_tools
  local claims = caller
  if type(caller) == "table" and (caller[1] ~= nil or next(caller) == nil) then
    claims = { sub = "scopegate-test", scope = table.concat(caller, " ") }
  end
  local list = self.policy:evaluate { message = { jsonrpc = "2.0", id = 1, method = "tools/list" },
                                      claims = claims, public_url = self.public_url }
  local seen = {}
  if list.outcome ~= "allow" then return seen end
  for _, tool in ipairs(tools) do
    if self.policy:visible { name = tool.name, annotations = tool.annotations, claims = claims } then
      seen[#seen + 1] = tool.name
    end
  end
  table.sort(seen)
  return seen
end

function Policy:close()
  self.policy:close()
end

return M
