-- connmem_spec.lua -- what an open client connection costs the real binary in memory.
--
-- MCP clients hold keep-alive connections and SSE streams open for hours.
-- bench/connmem starts `scopegate serve` in front of an upstream of its
-- own, opens keep-alive connections (one answered request each) and SSE
-- streams through to the upstream, and reads the gateway's VmRSS. Before
-- the idle pools were given back, an idle connection cost 34 KiB and an
-- SSE stream 41 KiB, and closing them returned nothing (28x idle RSS after
-- 10,000 connections). The targets (issue 10): at most 13 KiB per idle
-- connection, RSS back within 2x idle after closing. Every answer is
-- checked by the tool, including a second request with a 20 KiB header on
-- connections whose memory was given back while idle.
-- Sanitizer builds allocate differently (redzones, quarantine, shadow
-- memory): there only the answers are checked, not the bytes.
local keys = require "keys"
local procs = require "procs"

local build = assert(os.getenv("SG_BUILD_DIR"))

describe("connection memory (bench/connmem, real binary)", function()
  it("keeps an idle connection under 13 KiB, a stream small, and gives memory back on close", function()
    local p = io.popen(keys.CLEAN .. "BUILD=" .. keys.q(build) ..
                       " python3 bench/connmem --connections 1500 --sse 300 --settle 1.5 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert(ok, "bench/connmem failed:\n" .. out)
    local idle, conns, per_conn, sse, sse_kib, closed = out:match(
      "CONNMEM idle_kib=(%d+) conns=%d+ conns_kib=(%d+) per_conn_bytes=(%d+) sse=(%d+) " ..
      "sse_kib=(%d+) closed_kib=(%d+)")
    assert(idle, "no CONNMEM line in:\n" .. out)
    idle, conns, per_conn = tonumber(idle), tonumber(conns), tonumber(per_conn)
    sse, sse_kib, closed = tonumber(sse), tonumber(sse_kib), tonumber(closed)
    if procs.sanitizer then return end
    assert(per_conn <= 13 * 1024, "an idle connection costs " .. per_conn .. " bytes:\n" .. out)
    local per_stream = (sse_kib - conns) * 1024 / sse
    assert(per_stream <= 24 * 1024, "an SSE stream costs " .. per_stream .. " bytes:\n" .. out)
    assert(closed <= 2 * idle, "RSS after closing is " .. closed .. " KiB, idle was " .. idle ..
           " KiB:\n" .. out)
  end)
end)
