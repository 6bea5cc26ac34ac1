-- package_spec.lua -- scopegate installs like the software operators already
-- run: `cpack -G DEB` builds a Debian package of the server whose
-- dependencies are runtime libraries only; unpacked into a scratch root, its
-- binary checks and tests a shipped example policy with the shipped presets
-- (it finds its Lua library from its own path, never from this source tree),
-- its man page is the binary's own --help, and its systemd unit passes
-- `systemd-analyze verify` with an exposure score of at most 2.0 ("OK").
local keys = require "keys"
local procs = require "procs"

local q, CLEAN = keys.q, keys.CLEAN
local BUILD = assert(os.getenv("SG_BUILD_DIR"), "SG_BUILD_DIR not set (use tests/busted.sh)")

describe("the Debian package", function()
  local dir, root, deb

  setup(function()
    dir = keys.tmpdir()
    root = dir .. "/root"
    -- A package of its own, built from this build tree into a scratch directory.
    keys.run("cd " .. q(BUILD) .. " && cpack -G DEB -B " .. q(dir .. "/pkg") .. " >/dev/null")
    deb = keys.run("ls " .. q(dir .. "/pkg") .. "/scopegate_*.deb"):match("[^\n]+")
    keys.run("dpkg-deb -x " .. q(deb) .. " " .. q(root))
  end)

  teardown(function()
    if dir then os.execute(CLEAN .. "rm -rf " .. q(dir)) end
  end)

  it("depends on runtime libraries only", function()
    local depends = keys.run("dpkg-deb -f " .. q(deb) .. " Depends")
    assert.truthy(depends:find("libmicrohttpd12", 1, true), depends)
    assert.truthy(depends:find("liblua5.4-0", 1, true), depends)
    assert.is_nil(depends:find("-dev", 1, true), depends)
    assert.is_nil(depends:find("libjwt", 1, true), depends) -- the test-only minter stays out
    assert.are.equal("scopegate", keys.run("dpkg-deb -f " .. q(deb) .. " Package"):match("%S+"))
  end)

  it("runs check and test on a shipped preset example from the unpacked root", function()
    local bin = root .. "/usr/bin/scopegate"
    local examples = root .. "/usr/share/scopegate/examples"
    local out, err, code = procs.run(bin, "check " .. q(examples .. "/read_write.lua"))
    assert.are.equal(0, code, out .. err)
    assert.truthy(out:find("read_write.lua: ok", 1, true), out)
    out, err, code = procs.run(bin, "test " .. q(examples .. "/by_annotations.test.lua"))
    assert.are.equal(0, code, out .. err)
    assert.truthy(out:find(" 0 failed", 1, true), out)
    -- The presets came from the package, not from this tree.
    keys.write(dir .. "/missing.lua", 'local m = require "no_such_module"\nreturn {}\n')
    out = procs.run(bin, "check " .. q(dir .. "/missing.lua"))
    assert.truthy(out:find(root .. "/usr/bin/../share/scopegate/lua", 1, true), out)
    assert.is_nil(out:find(keys.run("pwd"):match("[^\n]+") .. "/policies", 1, true), out)
  end)

  it("carries a man page written from the binary's --help", function()
    local man = keys.run("gzip -dc " .. q(root .. "/usr/share/man/man1/scopegate.1.gz"))
    assert.truthy(man:find(".TH SCOPEGATE 1", 1, true))
    local serve_help = procs.run(root .. "/usr/bin/scopegate", "serve --help")
    for flag in serve_help:gmatch("(%-%-[%w-]+)") do
      assert.truthy(man:find(flag:gsub("%-", "\\-"), 1, true) or man:find(flag, 1, true),
                    "man page lacks " .. flag)
    end
  end)

  it("has a systemd unit that verifies and is hardened", function()
    local unit = root .. "/usr/lib/systemd/system/scopegate.service"
    -- Point ExecStart at the unpacked binary; everything else as shipped.
    local text = keys.read(unit):gsub("/usr/bin/scopegate", root .. "/usr/bin/scopegate")
    keys.write(dir .. "/scopegate.service", text)
    local out, err, code = procs.run("systemd-analyze", "verify --man=no " .. q(dir .. "/scopegate.service"))
    assert.are.equal(0, code, out .. err)
    out = procs.run("systemd-analyze", "security --offline=true " .. q(dir .. "/scopegate.service"))
    local score = tonumber(out:match("Overall exposure level for scopegate%.service: ([%d.]+)"))
    assert.is_not_nil(score, out)
    assert.is_true(score <= 2.0, "exposure " .. tostring(score))
  end)
end)
