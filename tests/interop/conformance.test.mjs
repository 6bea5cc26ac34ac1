// tests/interop/conformance.test.mjs -- the MCP conformance server suite
// (@modelcontextprotocol/conformance) directly and through the real scopegate binary with an
// all-public policy (tests/interop/policies/public.lua), against two upstreams:
//
// - tests/peers/conformance_server.mjs, our fixture server, which implements every tool,
//   resource, prompt, completion, logging, progress, sampling and elicitation fixture the
//   scenarios call. It must pass every active scenario (30 of 30 with runner 0.1.16) directly,
//   and the same 30 through scopegate three runs in a row (one gateway, consecutive runs: state
//   that piles up in the gateway shows). The pending scenarios run too (`--suite all`): none may
//   fail a check, json-schema-2020-12 must pass.
// - server-everything, a real third-party server: fewer scenarios pass (it lacks the fixtures),
//   and none that passes directly may fail through scopegate.
//
// Why it exists: the runner exercises protocol corners our own tests would not think of (SSE
// priming events, several streams at once, subscriptions, DNS-rebinding headers, and the
// server-to-client requests: `sampling/createMessage` and `elicitation/create` arrive on the SSE
// stream of the tools/call POST, and the client's answers must flow back through the gateway as
// POSTs of JSON-RPC responses). With a policy that allows everything, a scenario the gateway
// breaks is a transport bug in scopegate.
//
// The runner cannot send a bearer token, so scopegate gets a throwaway public key it never uses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
    here, startEverything, startConformanceServer, startGateway, throwawayPublicKey, stopAll, tempDir, runConformance,
    scenarioPassed
} from './lib.mjs';

// Runner 0.1.16: 30 active server scenarios; `--suite all` adds these two pending ones.
const ACTIVE_SCENARIOS = 30;
const PENDING = new Set(['json-schema-2020-12', 'server-sse-polling']);
const GATEWAY_RUNS = 3;

let everything, fixture, gwEverything, gwFixture;
let direct, through;                 // server-everything
let fxDirect;                        // the fixture, directly
const fxThrough = [];                // the fixture through scopegate, GATEWAY_RUNS runs

before(async () => {
    [everything, fixture] = await Promise.all([startEverything(), startConformanceServer()]);
    const key = throwawayPublicKey();
    const gateway = upstream => startGateway({
        upstream,
        policy: path.join(here, 'policies', 'public.lua'),
        keyArgs: ['--public-key', key, '--key-alg', 'RS256']
    });
    gwEverything = await gateway(everything.url);
    gwFixture = await gateway(fixture.url);
    const out = tempDir('sg-conformance-');
    // One after the other: the machine has two cores, and timing-sensitive scenarios (logging
    // and progress delays) should not compete with each other.
    direct = await runConformance(everything.url, path.join(out, 'everything-direct'));
    through = await runConformance(gwEverything.url, path.join(out, 'everything-gateway'));
    fxDirect = await runConformance(fixture.url, path.join(out, 'fixture-direct'), undefined, { suite: 'all' });
    for (let run = 1; run <= GATEWAY_RUNS; run++) {
        fxThrough.push(await runConformance(gwFixture.url, path.join(out, `fixture-gateway-${run}`), undefined, { suite: 'all' }));
    }
});

after(stopAll);

// The runner's own "Total: N passed, M failed" counts checks (a scenario may have several), so
// both are shown: scenarios (what the assertions are about) and checks.
const tally = (run, only = () => true) => {
    const scenarios = [...run.scenarios].filter(([name]) => only(name)).map(([, s]) => s);
    const checks = scenarios.reduce((sum, s) => ({ passed: sum.passed + s.passed, failed: sum.failed + s.failed }),
        { passed: 0, failed: 0 });
    return `${scenarios.filter(scenarioPassed).length} of ${scenarios.length} scenarios pass ` +
        `(checks: ${checks.passed} passed, ${checks.failed} failed; ${(run.ms / 1000).toFixed(1)} s)`;
};
const active = name => !PENDING.has(name);

// The scenarios of a run that did not pass, each with its failed checks' messages.
function failures(run, only = () => true) {
    const out = [];
    for (const [name, s] of run.scenarios) {
        if (!only(name) || scenarioPassed(s)) continue;
        const why = [...run.checks].filter(([id, c]) => id.startsWith(`${name}/`) && c.status === 'FAILURE')
            .map(([id, c]) => `${id}: ${c.error ?? 'failed'}`);
        out.push(`${name}: ${s.passed} passed/${s.failed} failed${why.length ? ` (${why.join('; ')})` : ''}`);
    }
    return out;
}

// The pending scenarios may pass or only warn (server-sse-polling asks with protocol 2025-03-26,
// for which servers send no priming event, so its checks are warnings), but fail nothing.
function pendingFailures(run) {
    const out = [];
    for (const name of PENDING) {
        const s = run.scenarios.get(name);
        if (s === undefined || s.failed > 0) out.push(`${name}: ${s ? `${s.failed} failed` : 'did not run'}`);
    }
    const schema = run.scenarios.get('json-schema-2020-12');
    if (schema !== undefined && schema.failed === 0 && !scenarioPassed(schema)) out.push('json-schema-2020-12: no check passed');
    return out;
}

test('our fixture server passes every active scenario directly', t => {
    t.diagnostic(`conformance fixture directly:                ${tally(fxDirect, active)}`);
    t.diagnostic(`conformance fixture directly, pending suite: ${tally(fxDirect, name => PENDING.has(name))}`);
    const names = [...fxDirect.scenarios.keys()].filter(active);
    assert.equal(names.length, ACTIVE_SCENARIOS, `expected ${ACTIVE_SCENARIOS} active scenarios (runner 0.1.16), got ${names.length}: ` +
        `${names.join(', ')}\n${fxDirect.stdout.slice(-3000)}`);
    assert.deepEqual(failures(fxDirect, active), [], `${fxDirect.stdout.slice(-3000)}\n${fixture.proc.log.slice(-2000)}`);
    assert.deepEqual(pendingFailures(fxDirect), []);
});

test(`through scopegate, every active scenario passes ${GATEWAY_RUNS} runs in a row`, t => {
    const bad = [];
    fxThrough.forEach((run, i) => {
        t.diagnostic(`conformance fixture through scopegate, run ${i + 1}: ${tally(run, active)}`);
        assert.deepEqual([...run.scenarios.keys()], [...fxDirect.scenarios.keys()], `run ${i + 1} ran other scenarios`);
        for (const line of [...failures(run, active), ...pendingFailures(run)]) bad.push(`run ${i + 1}: ${line}`);
    });
    for (const line of bad) t.diagnostic(`  ${line}`);
    assert.deepEqual(bad, [], `failed through scopegate:\n${gwFixture.log().slice(-3000)}\n${fixture.proc.log.slice(-2000)}`);
});

// server-sse-polling in runner 0.1.16 never sees a priming event (see above), so resumption is
// checked here by hand, with protocol 2025-11-25: the fixture's test_reconnection answers the
// POST with a priming event (id, retry, empty data) and closes the stream without the result;
// the client resumes with GET + Last-Event-ID and gets the result replayed (MCP 2025-11-25
// basic/transports, "Resumability and Redelivery"). Through scopegate, the priming event must
// survive and Last-Event-ID must reach the upstream.
async function resumeAfterClose(url) {
    const base = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
    const post = (body, headers) => fetch(url, { method: 'POST', headers: { ...base, ...headers }, body: JSON.stringify(body) });
    const init = await post({
        jsonrpc: '2.0', id: 1, method: 'initialize',
        params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'scopegate-interop-resume', version: '1.0.0' } }
    });
    await init.text();
    assert.equal(init.status, 200);
    const session = { 'Mcp-Session-Id': init.headers.get('mcp-session-id'), 'MCP-Protocol-Version': '2025-11-25' };
    assert.ok(session['Mcp-Session-Id'], 'the fixture is stateful');
    assert.equal((await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, session)).status, 202);
    const call = await post({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'test_reconnection', arguments: {} } }, session);
    assert.equal(call.status, 200);
    assert.match(call.headers.get('content-type'), /^text\/event-stream/);
    const first = await call.text(); // ends when the fixture closes the stream
    const priming = /^id: (\S+)\r?\nretry: (\d+)\r?\ndata: ?\r?\n\r?\n$/.exec(first);
    assert.ok(priming, `only a priming event before the close: ${JSON.stringify(first)}`);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 10000);
    try {
        const get = await fetch(url, {
            headers: { Accept: 'text/event-stream', ...session, 'Last-Event-ID': priming[1] }, signal: controller.signal
        });
        assert.equal(get.status, 200);
        const reader = get.body.pipeThrough(new TextDecoderStream()).getReader();
        let replayed = '';
        while (!/\n\n/.test(replayed.replace(/\r/g, ''))) {
            const { value, done } = await reader.read();
            if (done) break;
            replayed += value;
        }
        const data = replayed.split(/\r?\n/).filter(l => l.startsWith('data:')).map(l => l.slice(5).trimStart()).join('\n');
        const message = JSON.parse(data);
        assert.equal(message.id, 2);
        assert.equal(message.result.content[0].text, 'Reconnection test completed successfully');
        return { retry: Number(priming[2]) };
    } finally {
        clearTimeout(timer);
        controller.abort();
    }
}

test('a stream closed mid-call resumes with Last-Event-ID, directly and through scopegate', async () => {
    assert.deepEqual(await resumeAfterClose(fixture.url), { retry: 500 });
    assert.deepEqual(await resumeAfterClose(gwFixture.url), { retry: 500 });
});

test('server-everything: the runner ran against both, and the basics pass directly', t => {
    t.diagnostic(`conformance server-everything directly:          ${tally(direct)}`);
    t.diagnostic(`conformance server-everything through scopegate: ${tally(through)}`);
    assert.ok(direct.scenarios.size >= 30, direct.stdout.slice(-3000));
    assert.deepEqual([...through.scenarios.keys()], [...direct.scenarios.keys()]);
    for (const name of ['server-initialize', 'ping', 'tools-list', 'tools-call-simple-text', 'resources-list', 'prompts-list']) {
        assert.ok(scenarioPassed(direct.scenarios.get(name)), `${name} should pass directly:\n${direct.stdout.slice(-3000)}`);
    }
});

test('server-everything: no scenario that passes directly fails through scopegate', t => {
    const differ = [];
    const regressions = [];
    for (const [name, d] of direct.scenarios) {
        const g = through.scenarios.get(name);
        if (scenarioPassed(d) === scenarioPassed(g)) continue;
        differ.push(`${name}: direct ${d.passed} passed/${d.failed} failed, through scopegate ${g?.passed} passed/${g?.failed} failed`);
        if (scenarioPassed(d)) regressions.push(name);
    }
    // Check level, for the why: each check whose status changed, with the gateway-side error.
    for (const [id, d] of direct.checks) {
        const g = through.checks.get(id);
        if (g?.status !== d.status) t.diagnostic(`check ${id}: ${d.status} -> ${g?.status ?? 'missing'}${g?.error ? ` (${g.error})` : ''}`);
    }
    t.diagnostic(differ.length ? `scenarios whose result differs: ${differ.length}` : 'no scenario differs');
    for (const line of differ) t.diagnostic(`  ${line}`);
    assert.deepEqual(regressions, [], `passed directly, failed through scopegate:\n${gwEverything.log().slice(-3000)}`);
});
