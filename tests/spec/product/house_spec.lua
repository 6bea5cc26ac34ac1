-- House rules checked over the source itself: in every folder of src/ no
-- function is longer than 80 lines unless the comment above it says why
-- ("Long because ..."), and no .c file is longer than 850 lines (a file
-- that long holds two concerns). A function is counted from the line that
-- starts its signature to its closing brace, both at column 0
-- (clang-format's layout).
local LIMIT = 80
local FILE_LIMIT = 850
local FOLDERS = { "src/base", "src/authz", "src/auth", "src/policy", "src/mcp", "src/upstream",
                  "src/gateway", "src/net", "src/cli", "src/luamod" }

local function c_files(dir)
  local p = io.popen("ls " .. dir .. "/*.c")
  local files = {}
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  return files
end

-- Every function of a file: { name, line, length, why } where why is the
-- comment block right above its signature (or "").
local function functions(path)
  local lines = {}
  for l in io.lines(path) do lines[#lines + 1] = l end
  local found, sig, open = {}, nil, nil
  for i, l in ipairs(lines) do
    if l:match("^[%a_][%w_ %*]*[%w_]+%(") and not l:match(";%s*$") and
       not l:match("^typedef") and not l:match("^struct") then
      sig = i
    elseif l:match("^{") and sig then
      local j, comment = sig - 1, {}
      while j > 0 and (lines[j]:match("^/%*") or lines[j]:match("^ %*")) do
        table.insert(comment, 1, lines[j])
        j = j - 1
      end
      open = { name = lines[sig]:match("([%w_]+)%("), line = sig,
               why = table.concat(comment, "\n") }
      found[#found + 1] = open
    elseif l:match("^}") then
      if open then open.length = i - open.line + 1 end
      sig, open = nil, nil
    end
  end
  return found
end

describe("house rules", function()
  for _, dir in ipairs(FOLDERS) do
    it("no function in " .. dir .. " is over " .. LIMIT .. " lines without saying why", function()
      local bad, seen = {}, 0
      for _, f in ipairs(c_files(dir)) do
        for _, fn in ipairs(functions(f)) do
          seen = seen + 1
          if fn.length and fn.length > LIMIT and not fn.why:find("Long because", 1, true) then
            bad[#bad + 1] = string.format("%s:%d: %s is %d lines", f, fn.line, fn.name, fn.length)
          end
        end
      end
      assert.is_true(seen > 10, "the scan found too few functions to be right")
      assert.are.same({}, bad)
    end)
  end

  it("no .c file in src/ is over " .. FILE_LIMIT .. " lines", function()
    local bad, seen = {}, 0
    for _, dir in ipairs(FOLDERS) do
      for _, f in ipairs(c_files(dir)) do
        local n = 0
        for _ in io.lines(f) do n = n + 1 end
        seen = seen + 1
        if n > FILE_LIMIT then bad[#bad + 1] = f .. ": " .. n .. " lines" end
      end
    end
    assert.is_true(seen > 60, "the scan found too few files to be right")
    assert.are.same({}, bad)
  end)
end)
