// tests/interop/reload.test.mjs -- hot reload under load, through the real binary.
//
// Why it exists: operators edit policies while the gateway serves traffic. The promise (see
// docs/policy.md "Hot reload") is that a valid edit takes effect within a second, at a request
// boundary, with no failed request, and that an invalid edit never takes effect. This drives a
// steady stream of tools/call requests (>= 500 per second, over keep-alive connections) to the
// journal example server through scopegate while the test rewrites the policy 16 times (every
// kind of edit twice; SG_RELOAD_WRITES=50 makes a longer soak of it), alternating valid
// versions (that flip `list_entries` between allowed and 403) with invalid ones (syntax error,
// error inside a rule, undeclared scope returned by a rule, `require` of a missing module).
// Every response is checked against the valid version in force when it was sent.
//
// Three ways to deliver the edits: an editor's write-to-temp-and-rename, the Kubernetes
// ConfigMap volume (the policy reached through `..data`, a symlink swapped by rename), and
// SIGHUP with --no-watch. SIGHUP also re-reads --public-key (key rotation without restart).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { generateKeyPairSync, createSign } from 'node:crypto';
import { startJournal, startGateway, stopAll, tempDir } from './lib.mjs';

const RESOURCE = 'https://journal.example.com/mcp';
const SCOPE = 'journal:entries:read';
const WRITES = Number(process.env.SG_RELOAD_WRITES ?? 16);
const CONNECTIONS = 8;
const TAKE_EFFECT_MS = 1000;

after(stopAll);

function keyPair(dir, name) {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pub = path.join(dir, `${name}.pub.pem`);
    fs.writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }));
    return { pub, privateKey };
}

const b64url = b => Buffer.from(b).toString('base64url');
function mint(privateKey, scope) {
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT' }));
    const body = b64url(JSON.stringify({ sub: 'reload-test', aud: RESOURCE, scope, iat: now, exp: now + 3600 }));
    const sig = createSign('RSA-SHA256').update(`${head}.${body}`).sign(privateKey);
    return `${head}.${body}.${b64url(sig)}`;
}

// The policy versions. `allow`/`deny` are valid and decide list_entries; the invalid ones are
// written right after a version that allows, so that if one took effect (an erroring rule
// denies, an undeclared scope is a 403) the responses would show it.
const HEAD = `return {
  resource = "${RESOURCE}",
  scopes = { ["journal:entries:read"] = "Read", ["journal:admin"] = "Admin" },`;
const VERSIONS = {
    allow: `${HEAD}\n  tools = { list_entries = "journal:entries:read" },\n}\n`,
    deny: `${HEAD}\n  tools = { list_entries = "journal:admin" },\n}\n`,
    syntax: `${HEAD}\n  tools = { list_entries = "journal:entries:read" ,\n`,
    rule_error: `${HEAD}\n  tools = { list_entries = function(req) return nil .. "x" end },\n}\n`,
    undeclared: `${HEAD}\n  tools = { list_entries = function(req) return "journal:entries:reed" end },\n}\n`,
    missing_module: `local lib = require "no_such_module_here"\n${HEAD}\n  tools = { list_entries = "journal:entries:read" },\n}\n`
};
const CYCLE = ['allow', 'rule_error', 'deny', 'syntax', 'allow', 'undeclared', 'deny', 'missing_module'];
const STATUS = { allow: 200, deny: 403 };

// Ways to put a new text in place.
function renameWriter(file) {
    return text => {
        const tmp = `${file}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, text);
        fs.renameSync(tmp, file);
    };
}

// The ConfigMap volume layout: dir/policy.lua -> ..data/policy.lua, ..data -> ..<stamp>/.
function configMap(dir, first) {
    let n = 0;
    const publish = text => {
        const stamp = `..${Date.now()}_${n++}`;
        fs.mkdirSync(path.join(dir, stamp));
        fs.writeFileSync(path.join(dir, stamp, 'policy.lua'), text);
        const old = fs.existsSync(path.join(dir, '..data')) ? fs.readlinkSync(path.join(dir, '..data')) : null;
        fs.symlinkSync(stamp, path.join(dir, '..data_tmp'));
        fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
        if (old) fs.rmSync(path.join(dir, old), { recursive: true, force: true });
    };
    publish(first);
    fs.symlinkSync(path.join('..data', 'policy.lua'), path.join(dir, 'policy.lua'));
    return publish;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

// Keeps CONNECTIONS request loops going until stopped; records every response.
function load(url, token) {
    const log = [];
    let running = true;
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'list_entries', arguments: {} } });
    const headers = {
        'Content-Type': 'application/json', Accept: 'application/json, text/event-stream',
        Authorization: `Bearer ${token}`, 'MCP-Protocol-Version': '2025-06-18'
    };
    const loops = Array.from({ length: CONNECTIONS }, async () => {
        while (running) {
            const sent = performance.now();
            let status;
            try {
                const res = await fetch(url, { method: 'POST', headers, body });
                await res.arrayBuffer();
                status = res.status;
            } catch (err) {
                status = `error: ${err.cause?.code ?? err.message}`;
            }
            log.push({ sent, received: performance.now(), status });
        }
    });
    return { log, stop: async () => { running = false; await Promise.all(loops); } };
}

// Writes the versions while the load runs; returns the timeline of valid versions.
async function rewrite(write, poke, traffic) {
    const timeline = [{ kind: 'allow', written: 0, seen: 0 }]; // the version the gateway started with
    const latencies = [];
    for (let i = 0; i < WRITES; i++) {
        const kind = CYCLE[(i + 1) % CYCLE.length];
        const written = performance.now();
        write(VERSIONS[kind]);
        await poke();
        if (kind in STATUS) {
            const entry = { kind, written, seen: null };
            timeline.push(entry);
            const start = traffic.log.length;
            while (performance.now() - written < 3000) {
                const hit = traffic.log.slice(start).find(r => r.sent > written && r.status === STATUS[kind]);
                if (hit) {
                    entry.seen = hit.received;
                    break;
                }
                await sleep(5);
            }
            assert.ok(entry.seen, `version ${i + 1} (${kind}) never took effect`);
            latencies.push(entry.seen - written);
            await sleep(50);
        } else {
            await sleep(600); // longer than the debounce plus a load: it would have taken effect
        }
    }
    return { timeline, latencies };
}

// Every response: no 5xx, no connection error; after a valid version was seen in effect and
// before the next write, exactly that version's status.
function verify(log, timeline) {
    assert.ok(log.length > 0);
    for (const r of log) {
        assert.ok(r.status === 200 || r.status === 403, `unexpected response: ${r.status}`);
    }
    for (let k = 0; k < timeline.length; k++) {
        const from = timeline[k].seen;
        const until = k + 1 < timeline.length ? timeline[k + 1].written : Infinity;
        for (const r of log) {
            if (r.sent > from && r.received < until) {
                assert.equal(r.status, STATUS[timeline[k].kind],
                    `a request sent ${(r.sent - from).toFixed(1)} ms after version ${k} (${timeline[k].kind}) was seen got ${r.status}`);
            }
        }
    }
}

async function scenario(t, { layout, extra = [], poke }) {
    const dir = tempDir('sg-reload-');
    const { pub, privateKey } = keyPair(dir, 'key');
    const journal = await startJournal();
    let policyFile, write;
    if (layout === 'configmap') {
        const vol = path.join(dir, 'volume');
        fs.mkdirSync(vol);
        write = configMap(vol, VERSIONS.allow);
        policyFile = path.join(vol, 'policy.lua');
    } else {
        policyFile = path.join(dir, 'policy.lua');
        fs.writeFileSync(policyFile, VERSIONS.allow);
        write = renameWriter(policyFile);
    }
    const gw = await startGateway({ upstream: journal.url, policy: policyFile, keyArgs: ['--public-key', pub], extra });
    const traffic = load(gw.url, mint(privateKey, SCOPE));
    const t0 = performance.now();
    let result;
    try {
        result = await rewrite(write, () => poke(gw), traffic);
    } finally {
        await traffic.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    const rate = traffic.log.length / seconds;
    t.diagnostic(`${layout}: ${traffic.log.length} requests in ${seconds.toFixed(1)} s = ${rate.toFixed(0)}/s; ` +
        `valid versions took effect in ${Math.min(...result.latencies).toFixed(0)}-${Math.max(...result.latencies).toFixed(0)} ms`);
    assert.ok(rate >= 500, `only ${rate.toFixed(0)} requests per second`);
    for (const ms of result.latencies) assert.ok(ms < TAKE_EFFECT_MS, `a valid version took ${ms.toFixed(0)} ms`);
    verify(traffic.log, result.timeline);
    const log = gw.log();
    assert.match(log, /policy reload refused: .*policy\.lua:\d+: /, 'refusals are logged with file:line');
    assert.match(log, /policy reloaded \(.*\): policy [0-9a-f]{12} in force \(was [0-9a-f]{12}\)/);
    return { gw, dir, privateKey, pub };
}

const noPoke = async () => {};
const sighup = async gw => { gw.proc.child.kill('SIGHUP'); };

test('hot reload under load: editor-style rename over the policy', async t => {
    await scenario(t, { layout: 'file', poke: noPoke });
});

test('hot reload under load: Kubernetes ConfigMap ..data symlink swap', async t => {
    await scenario(t, { layout: 'configmap', poke: noPoke });
});

test('hot reload under load: SIGHUP with --no-watch, and SIGHUP re-reads --public-key', async t => {
    const { gw, dir, privateKey, pub } = await scenario(t, { layout: 'file', extra: ['--no-watch'], poke: sighup });
    // With --no-watch a write alone changes nothing.
    const call = async token => (await fetch(gw.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', Authorization: `Bearer ${token}`, 'MCP-Protocol-Version': '2025-06-18' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'list_entries', arguments: {} } })
    })).status;
    const oldToken = mint(privateKey, SCOPE);
    fs.writeFileSync(path.join(dir, 'policy.lua'), VERSIONS.allow);
    await sighup(gw);
    await sleep(300);
    assert.equal(await call(oldToken), 200);
    fs.writeFileSync(path.join(dir, 'policy.lua'), VERSIONS.deny);
    await sleep(800);
    assert.equal(await call(oldToken), 200, '--no-watch: a write alone must not reload');
    fs.writeFileSync(path.join(dir, 'policy.lua'), VERSIONS.allow);
    // Key rotation: the new key replaces the old one on SIGHUP; tokens of the old key are refused.
    const next = keyPair(dir, 'next');
    fs.copyFileSync(next.pub, pub);
    await sighup(gw);
    await sleep(300);
    assert.equal(await call(mint(next.privateKey, SCOPE)), 200, 'a token of the new key');
    assert.equal(await call(oldToken), 401, 'a token of the old key, cached before the rotation');
    assert.match(gw.log(), /SIGHUP: keys reloaded/);
    // A key file that no longer parses leaves the current keys in force.
    fs.writeFileSync(pub, 'not a key');
    await sighup(gw);
    await sleep(300);
    assert.equal(await call(mint(next.privateKey, SCOPE)), 200);
    assert.match(gw.log(), /SIGHUP: keys not reloaded \(the previous keys stay\): --public-key /);
});

test('hot reload: modules, delete and re-create, debounced bursts, metadata follows the policy', async () => {
    const dir = tempDir('sg-reload-');
    const { pub, privateKey } = keyPair(dir, 'key');
    const journal = await startJournal();
    const policyFile = path.join(dir, 'policy.lua');
    const module = path.join(dir, 'rules.lua');
    const policyText = resource => `local rules = require "rules"
return { resource = "${resource}", scopes = { ["journal:entries:read"] = "Read", ["journal:admin"] = "Admin" },
  tools = { list_entries = rules.list_entries } }
`;
    fs.writeFileSync(module, 'return { list_entries = "journal:entries:read" }\n');
    fs.writeFileSync(policyFile, policyText(RESOURCE));
    const gw = await startGateway({ upstream: journal.url, policy: policyFile, keyArgs: ['--public-key', pub] });
    const token = mint(privateKey, SCOPE);
    const call = async () => (await fetch(gw.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', Authorization: `Bearer ${token}`, 'MCP-Protocol-Version': '2025-06-18' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'list_entries', arguments: {} } })
    })).status;
    const reloads = () => (gw.log().match(/policy reloaded \(/g) ?? []).length;
    const until = async (what, f) => {
        const t0 = performance.now();
        while (performance.now() - t0 < 1500) {
            if (await f()) return performance.now() - t0;
            await sleep(20);
        }
        assert.fail(`${what} did not happen within 1.5 s:\n${gw.log().slice(-2000)}`);
    };
    assert.equal(await call(), 200);

    // A module the policy requires is watched too.
    fs.writeFileSync(module, 'return { list_entries = "journal:admin" }\n');
    await until('the module edit', async () => (await call()) === 403);

    // A burst of writes (an editor saving in pieces) is one reload, once they stop.
    const before = reloads();
    for (let i = 0; i < 10; i++) {
        fs.writeFileSync(module, `return { list_entries = "journal:${i % 2 ? 'admin' : 'entries:read'}" } -- ${i}\n`);
        await sleep(20);
    }
    fs.writeFileSync(module, 'return { list_entries = "journal:entries:read" }\n');
    await until('the burst', async () => (await call()) === 200);
    await sleep(600);
    assert.equal(reloads() - before, 1, `one reload per burst:\n${gw.log().slice(-2000)}`);

    // Deleted, then created again: the new text takes effect; the gap changes nothing.
    fs.rmSync(policyFile);
    await sleep(100);
    assert.equal(await call(), 200, 'while the file is missing the last good policy serves');
    fs.writeFileSync(policyFile, policyText(RESOURCE).replace('rules.list_entries', '"journal:admin"'));
    await until('the re-created file', async () => (await call()) === 403);

    // `resource` changes: the RFC 9728 metadata document follows.
    const metadata = async () => (await (await fetch(`${gw.origin}/.well-known/oauth-protected-resource/mcp`)).json()).resource;
    assert.equal(await metadata(), RESOURCE);
    fs.writeFileSync(policyFile, policyText('https://journal.example.net/mcp'));
    await until('the metadata change', async () => (await metadata()) === 'https://journal.example.net/mcp');
});
