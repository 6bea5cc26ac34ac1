// tests/interop/slowclients.test.mjs -- slow clients cannot take the gateway down.
//
// Why it exists: a thousand connections that each trickle one header byte now and then used to
// fill --max-connections for as long as they liked (every byte reset the idle timer), and every
// honest request got 503. This starts the real binary with its default limits in front of the
// journal example server, opens 1,000 trickling connections from a separate process
// (tests/peers/slow_clients.mjs) and then has an honest client send a few hundred tools/call
// requests, each on a new connection (a client that connects after the attack began, the case
// that got 503), checking that all succeed with p99 under 50 ms, and that the trickling heads are
// cut off with 408 by the header deadline. A second test checks the minimum body rate.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { generateKeyPairSync, createSign } from 'node:crypto';
import { NODE, peersDir, root, startJournal, startGateway, stopAll, tempDir } from './lib.mjs';

const RESOURCE = 'https://journal.example.com/mcp';
const ATTACKERS = 1000;
const HONEST_REQUESTS = 300;
const HONEST_PACE_MS = 20; // spread over ~6 s+, longer than the 5 s header deadline
const P99_LIMIT_MS = 50;

after(stopAll);

const b64url = b => Buffer.from(b).toString('base64url');
function mint(privateKey, scope) {
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT' }));
    const body = b64url(JSON.stringify({ sub: 'slow-test', aud: RESOURCE, scope, iat: now, exp: now + 3600 }));
    const sig = createSign('RSA-SHA256').update(`${head}.${body}`).sign(privateKey);
    return `${head}.${body}.${b64url(sig)}`;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

// One POST on a connection of its own; resolves with { status, ms }.
function honestRequest(port, token) {
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'list_entries', arguments: {} } });
    return new Promise(resolve => {
        const started = performance.now();
        const req = http.request({
            host: '127.0.0.1', port, path: '/mcp', method: 'POST', agent: false,
            headers: {
                'Content-Type': 'application/json', Accept: 'application/json, text/event-stream',
                Authorization: `Bearer ${token}`, 'MCP-Protocol-Version': '2025-06-18',
                'Content-Length': Buffer.byteLength(body), Connection: 'close'
            }
        }, res => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - started }));
        });
        req.on('error', err => resolve({ status: `error: ${err.code ?? err.message}`, ms: performance.now() - started }));
        req.setTimeout(10000, () => req.destroy(new Error('timeout')));
        req.end(body);
    });
}

async function gatewayWithJournal(extra = []) {
    const dir = tempDir('sg-slow-');
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pub = path.join(dir, 'public.pem');
    fs.writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }));
    const policy = path.join(dir, 'policy.lua');
    fs.writeFileSync(policy, `return {
  resource = "${RESOURCE}",
  scopes = { ["journal:entries:read"] = "Read" },
  tools = { list_entries = "journal:entries:read" },
}
`);
    const journal = await startJournal();
    const gw = await startGateway({ upstream: journal.url, policy, keyArgs: ['--public-key', pub], extra });
    return { gw, token: mint(privateKey, 'journal:entries:read') };
}

test('1,000 trickling connections: honest requests keep succeeding, p99 < 50 ms', { timeout: 120000 }, async () => {
    const { gw, token } = await gatewayWithJournal();
    // Warm up (token cache, upstream connection) before the attack.
    for (let i = 0; i < 5; i++) assert.equal((await honestRequest(gw.port, token)).status, 200);

    const attacker = spawn(NODE, [path.join(peersDir, 'slow_clients.mjs'), '--port', String(gw.port),
        '--connections', String(ATTACKERS), '--interval-ms', '1000'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let latest = null, ready = null, readyAt = 0;
    let buffered = '';
    attacker.stdout.on('data', d => {
        buffered += d;
        let nl;
        while ((nl = buffered.indexOf('\n')) >= 0) {
            const msg = JSON.parse(buffered.slice(0, nl));
            buffered = buffered.slice(nl + 1);
            if (msg.ready) {
                ready = msg;
                readyAt = performance.now();
            } else {
                latest = msg;
            }
        }
    });
    try {
        for (let waited = 0; !ready; waited += 50) {
            assert.ok(waited < 30000, 'the attacker did not open its connections');
            await sleep(50);
        }
        await sleep(500); // every connection has sent bytes of its head
        assert.ok(latest && latest.open >= ATTACKERS * 0.99, `attack in force: ${JSON.stringify(latest)}`);

        const results = [];
        for (let i = 0; i < HONEST_REQUESTS; i++) {
            const at = performance.now() - readyAt;
            results.push({ ...(await honestRequest(gw.port, token)), at });
            await sleep(HONEST_PACE_MS);
        }
        await sleep(600); // one more counters line
        const failed = results.filter(r => r.status !== 200);
        const ms = results.map(r => r.ms).sort((a, b) => a - b);
        const p50 = ms[Math.floor(ms.length * 0.5)], p99 = ms[Math.ceil(ms.length * 0.99) - 1];
        console.log(`# slow clients: ${results.length} honest requests, p50 ${p50.toFixed(1)} ms, ` +
            `p99 ${p99.toFixed(1)} ms, max ${ms[ms.length - 1].toFixed(1)} ms; attacker ${JSON.stringify(latest)}`);
        const slowest = [...results].sort((a, b) => b.ms - a.ms).slice(0, 5)
            .map(r => `${r.ms.toFixed(0)} ms at +${(r.at / 1000).toFixed(2)} s`);
        console.log(`# slowest: ${slowest.join(', ')}`);
        assert.deepEqual(failed.slice(0, 5), [], `${failed.length} honest requests failed`);
        assert.ok(p99 < P99_LIMIT_MS, `p99 ${p99.toFixed(1)} ms >= ${P99_LIMIT_MS} ms`);
        // The attack kept going all along (the attacker reconnects), and the header deadline cut
        // its heads off with 408.
        assert.ok(performance.now() - readyAt > 6000, 'the honest phase outlasted the header deadline');
        assert.ok((latest.statuses['408'] ?? 0) >= ATTACKERS / 2, `heads cut off with 408: ${JSON.stringify(latest)}`);
        assert.ok(latest.open >= ATTACKERS * 0.9, `the attacker still had its connections: ${JSON.stringify(latest)}`);
    } finally {
        attacker.kill('SIGTERM');
    }
});

test('a body slower than --min-body-rate gets 408 after --body-grace', { timeout: 60000 }, async () => {
    const { gw } = await gatewayWithJournal(['--body-grace', '1', '--min-body-rate', '1000']);
    const sock = net.connect({ host: '127.0.0.1', port: gw.port });
    await new Promise(r => sock.on('connect', r));
    let answer = '';
    sock.on('data', d => { answer += d; });
    const closed = new Promise(r => sock.on('close', r));
    sock.on('error', () => {});
    const started = performance.now();
    sock.write(`POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${gw.port}\r\nContent-Type: application/json\r\n` +
        'Content-Length: 100000\r\n\r\n{"jsonrpc":"2.0",');
    // 100 bytes per second: 10 times too slow.
    const timer = setInterval(() => sock.write(' '.repeat(100)), 1000);
    await Promise.race([closed, sleep(15000)]);
    clearInterval(timer);
    const took = performance.now() - started;
    assert.match(answer, /^HTTP\/1\.1 408 /);
    assert.match(answer, /Request body too slow/);
    assert.ok(took > 1000 && took < 5000, `408 after ${took.toFixed(0)} ms (grace 1 s)`);
});
