// tests/interop/conformance.test.mjs -- the MCP conformance server suite
// (@modelcontextprotocol/conformance, active scenarios) against server-everything twice: directly,
// and through the real scopegate binary with an all-public policy
// (tests/interop/policies/public.lua). Fails if any scenario that passes directly fails through
// the gateway.
//
// Why it exists: the runner exercises protocol corners our own tests would not think of (SSE
// priming events, several streams at once, subscriptions, DNS-rebinding headers). With a policy
// that allows everything, a scenario the gateway breaks is a transport bug in scopegate. Many
// scenarios fail on both sides because server-everything lacks the conformance fixtures
// (test_simple_prompt, ...); they still run, and any difference is listed.
//
// The runner cannot send a bearer token, so scopegate gets a throwaway public key it never uses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
    here, startEverything, startGateway, throwawayPublicKey, stopAll, tempDir, runConformance, scenarioPassed
} from './lib.mjs';

let upstream, gw, direct, through;

before(async () => {
    upstream = await startEverything();
    gw = await startGateway({
        upstream: upstream.url,
        policy: path.join(here, 'policies', 'public.lua'),
        keyArgs: ['--public-key', throwawayPublicKey(), '--key-alg', 'RS256']
    });
    const out = tempDir('sg-conformance-');
    // One after the other: both share the upstream and the machine has two cores.
    direct = await runConformance(upstream.url, path.join(out, 'direct'));
    through = await runConformance(gw.url, path.join(out, 'gateway'));
});

after(stopAll);

// The runner's own "Total: N passed, M failed" counts checks (a scenario may have several), so
// both are shown: scenarios (what the assertion is about) and checks.
const tally = run => {
    const scenarios = [...run.scenarios.values()];
    const checks = scenarios.reduce((sum, s) => ({ passed: sum.passed + s.passed, failed: sum.failed + s.failed }),
        { passed: 0, failed: 0 });
    return `${scenarios.filter(scenarioPassed).length} of ${scenarios.length} scenarios pass ` +
        `(checks: ${checks.passed} passed, ${checks.failed} failed)`;
};

test('the runner ran against both, and the basics pass directly', t => {
    t.diagnostic(`conformance directly:          ${tally(direct)}`);
    t.diagnostic(`conformance through scopegate: ${tally(through)}`);
    assert.ok(direct.scenarios.size >= 30, direct.stdout.slice(-3000));
    assert.deepEqual([...through.scenarios.keys()], [...direct.scenarios.keys()]);
    for (const name of ['server-initialize', 'ping', 'tools-list', 'tools-call-simple-text', 'resources-list', 'prompts-list']) {
        assert.ok(scenarioPassed(direct.scenarios.get(name)), `${name} should pass directly:\n${direct.stdout.slice(-3000)}`);
    }
});

test('no scenario that passes directly fails through scopegate', t => {
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
    assert.deepEqual(regressions, [], `passed directly, failed through scopegate:\n${gw.log().slice(-3000)}`);
});
