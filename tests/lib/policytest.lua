-- tests/lib/policytest.lua -- helpers shared by the policy and sandbox specs:
-- temporary policy directories, source line lookup and wall-clock timing
-- (through the C core's monotonic clock).
local core = require "scopegate.core"

local M = { core = core }

-- A fresh empty directory; remove it with M.rmdir.
function M.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

function M.rmdir(d)
  assert(d:match("^/tmp/"), "refusing to remove " .. d)
  os.execute("rm -rf '" .. d .. "'")
end

-- Writes src to dir/name (creating subdirectories) and returns the path.
function M.write(dir, name, src)
  local path = dir .. "/" .. name
  local sub = path:match("^(.*)/[^/]*$")
  os.execute("mkdir -p '" .. sub .. "'")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

-- The number of the first line of the file at path containing text
-- (plain), or an error.
function M.line_of(path, text)
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    if line:find(text, 1, true) then return n end
  end
  error("no line containing " .. text .. " in " .. path)
end

-- Runs f and returns its result and the wall time it took, in seconds.
function M.timed(f)
  local t0 = core.policy_clock()
  local r = f()
  return r, core.policy_clock() - t0
end

return M
