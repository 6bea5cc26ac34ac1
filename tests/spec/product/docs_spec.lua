-- The code blocks of docs/policy.md and README.md, executed. Every fenced
-- block says in its info string how it is run (docs/policy.md, "How the code
-- blocks in this document are tested"); a block without a recognised mode
-- fails this spec, so nothing in the docs goes untested by accident.
--
--   ```lua file=PATH        written to PATH in the document's scratch directory
--   ```lua                  a whole policy: `scopegate check` must accept it
--                           (same-as=PATH: and it must equal that file of the repo)
--   ```lua test-of=POLICY   a test file for POLICY (a repo path), put beside a
--                           copy of it in a temp dir and run by `scopegate test`:
--                           it must pass (exit=N: exit with N); an output block
--                           after it is its stdout, then its stderr
--   ```lua fragment         a piece of Lua: it must compile (load)
--   ```lua busted           run here, from the repo root, with busted's assert
--   ```sh                   run by `sh -e` in the scratch directory, scopegate on
--                           PATH; exit=N expects that status (default 0);
--                           background: started, waited for (its output must
--                           match the next output block), stopped at the end
--   ```text output          the exact stdout+stderr of the sh block before it;
--                           a line `...` stands for any number of lines,
--                           `...` within a line for any text in it
--   ```text example         an illustration that is not run (listed, counted)
--
-- The scratch directory is fresh per document; it holds a `policies` link to
-- the repo's policies/ so that blocks can name the shipped examples.
local K = require "keys"

local BUILD = os.getenv("SG_BUILD_DIR")
local ROOT = K.run("pwd"):gsub("%s+$", "")

-- ---- parsing -----------------------------------------------------------------

local function parse_info(info)
  local lang, rest = info:match("^(%S*)%s*(.-)%s*$")
  local attrs, flags = {}, {}
  for word in rest:gmatch("%S+") do
    local k, v = word:match("^([%w%-]+)=(.+)$")
    if k then attrs[k] = v else flags[#flags + 1] = word end
  end
  return lang, attrs, flags
end

-- Returns the fenced blocks of a markdown file: { line, info, lang, attrs,
-- flags, text } in document order. An indented fence (inside a list item)
-- has its indentation removed from its lines.
local function blocks_of(path)
  local list, cur = {}, nil
  local n = 0
  for line in (K.read(path) .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if cur then
      if line:match("^%s*```%s*$") then
        cur.text = table.concat(cur.lines, "\n") .. (#cur.lines > 0 and "\n" or "")
        cur.lines = nil
        list[#list + 1] = cur
        cur = nil
      else
        if line:sub(1, #cur.indent) == cur.indent then line = line:sub(#cur.indent + 1) end
        cur.lines[#cur.lines + 1] = line
      end
    else
      local indent, info = line:match("^(%s*)```(.*)$")
      if indent then
        local lang, attrs, flags = parse_info(info)
        cur = { line = n, info = info, lang = lang, attrs = attrs, flags = flags,
                indent = indent, lines = {} }
      end
    end
  end
  assert(not cur, path .. ":" .. (cur and cur.line or 0) .. ": unclosed code block")
  return list
end

local function has(b, flag)
  for _, f in ipairs(b.flags) do if f == flag then return true end end
  return false
end

-- The mode of a block, or nil and why not.
local function mode_of(b)
  local only = function(...)
    local allowed = {}
    for _, a in ipairs({ ... }) do allowed[a] = true end
    for k in pairs(b.attrs) do
      if not allowed[k] then return false, "unknown attribute " .. k end
    end
    return true
  end
  if b.lang == "lua" then
    if b.attrs.file then
      if #b.flags == 0 and only("file") then return "file" end
    elseif b.attrs["test-of"] then
      if #b.flags == 0 and only("test-of", "exit") then return "test-of" end
    elseif #b.flags == 0 then
      if only("same-as") then return "policy" end
    elseif #b.flags == 1 and (has(b, "fragment") or has(b, "busted")) and only() then
      return b.flags[1]
    end
  elseif b.lang == "sh" then
    if (#b.flags == 0 or (#b.flags == 1 and has(b, "background"))) and only("exit") then
      return b.flags[1] or "sh"
    end
  elseif (b.lang == "text" or b.lang == "json") and #b.flags == 1 and only() then
    if has(b, "output") then return "output" end
    if has(b, "example") then return "example" end
  end
  return nil, "no recognised mode in ```" .. b.info
end

-- ---- output matching -----------------------------------------------------------

local function lines(s)
  local t = {}
  s = s:gsub("\n+$", "")
  if s == "" then return t end
  for l in (s .. "\n"):gmatch("(.-)\n") do t[#t + 1] = (l:gsub("%s+$", "")) end
  return t
end

-- An expected line matches an actual line when they are equal, or when `...`
-- in the expected line stands for the text that varies (a timestamp).
local function line_matches(want, got)
  if not want:find("...", 1, true) then return want == got end
  local parts = {}
  for piece in (want .. "..."):gmatch("(.-)%.%.%.") do
    parts[#parts + 1] = piece:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  end
  return got:match("^" .. table.concat(parts, ".-") .. "$") ~= nil
end

-- Does `actual` match `expected`, where an expected line `...` stands for any
-- number of lines (zero included) and `...` within a line for any text?
local function matches(expected, actual)
  local e, a = lines(expected), lines(actual)
  local function go(i, j)
    if i > #e then return j > #a end
    if e[i] == "..." then
      for k = j, #a + 1 do if go(i + 1, k) then return true end end
      return false
    end
    return j <= #a and line_matches(e[i], a[j]) and go(i + 1, j + 1)
  end
  return go(1, 1)
end

-- ---- running -----------------------------------------------------------------------

local function mkdirs_for(dir, rel)
  local parent = rel:match("^(.*)/[^/]*$")
  if parent then K.run("mkdir -p " .. K.q(dir .. "/" .. parent)) end
end

local function sh(dir, script)
  K.write(dir .. "/.block.sh", script)
  local cmd = K.CLEAN .. "cd " .. K.q(dir) .. " && PATH=" .. K.q(BUILD) .. ":$PATH"
    .. " sh -e .block.sh >.block.out 2>&1"
  local _, _, code = os.execute(cmd)
  return K.read(dir .. "/.block.out"), code
end

local function check_policy(text)
  local dir = K.tmpdir()
  K.write(dir .. "/policy.lua", text)
  local p = io.popen(K.CLEAN .. K.q(BUILD .. "/scopegate") .. " check " .. K.q(dir .. "/policy.lua") .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  os.execute("rm -rf " .. K.q(dir))
  return out, code
end

-- Runs every block of a document (or only those in language only_lang).
-- Returns a count per mode.
local function run_document(path, only_lang)
  local blocks = blocks_of(path)
  if only_lang then
    local keep = {}
    for _, b in ipairs(blocks) do if b.lang == only_lang then keep[#keep + 1] = b end end
    blocks = keep
  end
  local counts = {}
  local dir = K.tmpdir()
  K.run("ln -s " .. K.q(ROOT .. "/policies") .. " " .. K.q(dir .. "/policies"))
  local background = {}
  local ok, err = pcall(function()
    local i = 1
    while i <= #blocks do
      local b = blocks[i]
      local at = path .. ":" .. b.line .. ": "
      local mode, why = mode_of(b)
      assert(mode, at .. tostring(why))
      counts[mode] = (counts[mode] or 0) + 1
      local nextb = blocks[i + 1]
      local expected = nextb and mode_of(nextb) == "output" and nextb or nil
      if mode == "file" then
        mkdirs_for(dir, b.attrs.file)
        K.write(dir .. "/" .. b.attrs.file, b.text)
      elseif mode == "policy" then
        local out, code = check_policy(b.text)
        assert(code == 0, at .. "scopegate check refuses this policy:\n" .. out)
        if b.attrs["same-as"] then
          assert(b.text == K.read(ROOT .. "/" .. b.attrs["same-as"]),
                 at .. "differs from " .. b.attrs["same-as"])
        end
      elseif mode == "test-of" then
        local t = K.tmpdir()
        local policy = b.attrs["test-of"]
        local base = policy:match("([^/]+)%.lua$")
        K.run("cp " .. K.q(ROOT .. "/" .. policy) .. " " .. K.q(t .. "/"))
        K.write(t .. "/" .. base .. ".test.lua", b.text)
        local out, code = sh(t, "scopegate test " .. base .. ".test.lua 2>.stderr\n")
        out = out .. K.read(t .. "/.stderr")
        os.execute("rm -rf " .. K.q(t))
        local want = tonumber(b.attrs.exit or "0")
        assert(code == want, at .. "scopegate test: exit status " .. tostring(code)
               .. ", expected " .. want .. "; output:\n" .. out)
        if expected then
          assert(matches(expected.text, out), at .. "output differs.\nexpected:\n"
                 .. expected.text .. "actual:\n" .. out)
        end
      elseif mode == "fragment" then
        local f, e = load(b.text, "=" .. at)
        assert(f, e)
      elseif mode == "busted" then
        local f = assert(load(b.text, "=" .. path .. ":" .. b.line, "t", _ENV))
        local here = K.run("pwd"):gsub("%s+$", "")
        assert(here == ROOT)
        f()
      elseif mode == "sh" then
        local out, code = sh(dir, b.text)
        local want = tonumber(b.attrs.exit or "0")
        assert(code == want, at .. "exit status " .. tostring(code) .. ", expected "
               .. want .. "; output:\n" .. out)
        if expected then
          assert(matches(expected.text, out), at .. "output differs.\nexpected:\n"
                 .. expected.text .. "actual:\n" .. out)
        end
      elseif mode == "background" then
        assert(expected, at .. "a background block needs an output block to wait for")
        K.write(dir .. "/.bg.sh", "exec " .. b.text)
        local log = dir .. "/.bg" .. i .. ".out"
        local pid = K.run(K.CLEAN .. "cd " .. K.q(dir) .. " && PATH=" .. K.q(BUILD) .. ":$PATH"
          .. " sh .bg.sh >" .. K.q(log) .. " 2>&1 & echo $!"):gsub("%s+$", "")
        background[#background + 1] = pid
        local out
        for _ = 1, 200 do
          out = K.read(log)
          if matches(expected.text, out) then break end
          os.execute("sleep 0.1")
        end
        assert(matches(expected.text, out), at .. "output differs.\nexpected:\n"
               .. expected.text .. "actual:\n" .. out)
      elseif mode == "output" then
        local prev = blocks[i - 1]
        local pm = prev and mode_of(prev)
        assert(pm == "sh" or pm == "background" or pm == "test-of",
               at .. "an output block must follow a sh or test-of block")
      end
      i = i + 1
    end
  end)
  for _, pid in ipairs(background) do
    os.execute("kill " .. pid .. " 2>/dev/null; sleep 0.2; kill -9 " .. pid .. " 2>/dev/null")
  end
  os.execute(K.CLEAN .. "rm -rf " .. K.q(dir))
  assert(ok, err)
  return counts
end

describe("the code blocks of the docs", function()
  it("output matching: `...` stands for any number of lines, nothing else is loose", function()
    assert.is_true(matches("a\n...\nd\n", "a\nb\nc\nd\n"))
    assert.is_true(matches("a\n...\nd\n", "a\nd\n"))
    assert.is_true(matches("...\n", ""))
    assert.is_false(matches("a\n...\nd\n", "a\nb\n"))
    assert.is_false(matches("a\nb\n", "a\nb\nc\n"))
    assert.is_false(matches("a b\n", "a  b\n"))
    assert.is_true(matches("... info listening on x\n", "2026-12-04T14:04:00Z info listening on x\n"))
    assert.is_false(matches("... info listening on x\n", "2026 warn listening on x\n"))
    assert.is_false(matches("a...\n", "b\n"))
  end)

  it("refuses a block without a recognised mode", function()
    local dir = K.tmpdir()
    K.write(dir .. "/x.md", "text\n\n```\nsome output\n```\n")
    local ok, err = pcall(run_document, dir .. "/x.md")
    assert.is_false(ok)
    assert.matches("x.md:3: no recognised mode", err, 1, true)
    K.write(dir .. "/y.md", "```lua\nreturn {}\n```\n```lua fragmnt\nx = 1\n```\n")
    ok, err = pcall(run_document, dir .. "/y.md")
    assert.is_false(ok)
    assert.matches("y.md:4: no recognised mode", err, 1, true)
    os.execute("rm -rf " .. K.q(dir))
  end)

  it("fails when a command's output differs from the document", function()
    local dir = K.tmpdir()
    K.write(dir .. "/x.md", "```lua file=p.lua\nreturn {}\n```\n```sh\nscopegate check p.lua\n```\n"
      .. "```text output\np.lua: not ok\n```\n")
    local ok, err = pcall(run_document, dir .. "/x.md")
    assert.is_false(ok)
    assert.matches("x.md:4: output differs", err, 1, true)
    assert.matches("actual:\np.lua: ok", err, 1, true)
    os.execute("rm -rf " .. K.q(dir))
  end)

  it("runs every block of docs/policy.md", function()
    local counts = run_document("docs/policy.md")
    -- The tutorial alone writes files, runs commands and shows their output.
    assert.is_true((counts.file or 0) >= 6)
    assert.is_true((counts.sh or 0) >= 8)
    assert.is_true((counts.output or 0) >= 8)
    assert.is_true((counts.background or 0) >= 1)
    -- Nothing in it is an illustration left unrun.
    assert.is_nil(counts.example)
  end)

  -- README's other blocks are a diagram, the two commands (which build and
  -- run everything) and an HTTP exchange: its policy example is what is run
  -- (cli_spec checks that it is policies/examples/minimal.lua as shipped).
  it("runs the Lua blocks of README.md", function()
    local counts = run_document("README.md", "lua")
    assert.is_true((counts.policy or 0) >= 1)
  end)
end)
