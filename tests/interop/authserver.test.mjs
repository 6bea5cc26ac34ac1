// tests/interop/authserver.test.mjs -- the real scopegate binary against a real authorization
// server (oidc-provider, tests/peers/oidc_server.mjs) in front of the journal example.
//
// Why it exists: issuer discovery, RFC 7662 introspection of opaque tokens and key rotation are
// only as good as their interoperability with an authorization server someone else wrote. These
// are the acceptance tests of docs/tokens.md "Opaque tokens" and "Discovery":
//   - the gateway is configured with the issuer URL alone and finds the JWKS and the
//     introspection endpoint itself; its RFC 9728 metadata names the issuer;
//   - JWT access tokens (RFC 8707 resource indicator -> aud) pass with the right scope only;
//   - opaque tokens are introspected: active -> allowed, garbage -> 401, expired -> 401, revoked
//     -> 401 once the (short) cache TTL is over; a flood of one junk token costs one call;
//   - client_secret_post works as well as client_secret_basic;
//   - a slow authorization server delays only the request that waits for it (one worker thread:
//     requests with cached or JWT tokens are answered meanwhile), and one that does not answer
//     within --introspection-timeout-ms gives 503, not 401;
//   - tokens with random kids cost at most one JWKS fetch per --jwks-refetch interval;
//   - a key rotated in at the authorization server (restarted with a new kid) is picked up
//     without restarting scopegate.
// Neither the client secret nor any token may appear in scopegate's log.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { peersDir, startPeer, startJournal, startGateway, stop, stopAll, tempDir, freePort } from './lib.mjs';

const RESOURCE = 'https://notes.example.test/mcp';
const READ = 'journal:entries:read';
const WRITE = 'journal:entries:write';
const SECRET = randomBytes(18).toString('base64url');
const b64url = v => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

let as, asPort, journal, policy, secretFile;
const seenTokens = [];

function startAs(kid) {
    return startPeer(path.join(peersDir, 'oidc_server.mjs'), [
        '--port', String(asPort), '--audience', RESOURCE, '--scopes', `${READ} ${WRITE}`,
        // One argument: a random base64url secret starts with '-' one time in
        // 64, and parseArgs then takes it for an option.
        '--kid', kid, `--secret=${SECRET}`, '--short-ttl', '2'
    ]);
}

async function token(clientId, scope) {
    const res = await fetch(as.token_endpoint, {
        method: 'POST',
        headers: {
            'Content-Type': 'application/x-www-form-urlencoded',
            Authorization: `Basic ${Buffer.from(`${clientId}:${SECRET}`).toString('base64')}`
        },
        body: new URLSearchParams({ grant_type: 'client_credentials', scope, resource: RESOURCE })
    });
    assert.equal(res.status, 200, await res.clone().text());
    const t = (await res.json()).access_token;
    seenTokens.push(t);
    return t;
}

async function asStats() {
    return (await fetch(`${as.issuer}/_test/stats`)).json();
}

async function setDelay(ms) {
    await fetch(`${as.issuer}/_test/delay?ms=${ms}`, { method: 'POST' });
}

// One tools/call through the gateway: { status, www, ms }.
async function call(gw, bearer, tool = 'list_entries') {
    const t0 = performance.now();
    const res = await fetch(gw.url, {
        method: 'POST',
        headers: {
            'Content-Type': 'application/json',
            Accept: 'application/json, text/event-stream',
            ...(bearer ? { Authorization: `Bearer ${bearer}` } : {})
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: tool, arguments: {} } })
    });
    await res.text();
    return { status: res.status, www: res.headers.get('www-authenticate') ?? '', ms: performance.now() - t0 };
}

// A gateway configured with the issuer URL alone (plus the introspection client).
function gateway(extra = []) {
    return startGateway({
        upstream: journal.url,
        policy,
        keyArgs: ['--issuer', as.issuer],
        extra: ['--introspection-client-id', 'scopegate', '--introspection-secret-file', secretFile, ...extra]
    });
}

function assertLogClean(gw) {
    const log = gw.log();
    assert.ok(!log.includes(SECRET), 'the client secret is in the log');
    for (const t of seenTokens) assert.ok(!log.includes(t), 'a token is in the log');
}

let main;
before(async () => {
    asPort = await freePort();
    [as, journal] = await Promise.all([startAs('key-1'), startJournal()]);
    const dir = tempDir('sg-authserver-');
    secretFile = path.join(dir, 'introspection-secret');
    fs.writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
    // The journal example's rules, bound to RESOURCE, naming no authorization server: the
    // metadata must then name the discovered issuer.
    policy = path.join(dir, 'policy.lua');
    fs.writeFileSync(policy, `return {
  resource = "${RESOURCE}",
  scopes = { ["${READ}"] = "Read", ["${WRITE}"] = "Write" },
  implies = { ["${WRITE}"] = { "${READ}" } },
  tools = { list_entries = "${READ}", create_entry = "${WRITE}" },
  default = "deny",
}
`);
    main = await gateway(['--introspection-cache-ttl', '1']);
});

after(stopAll);

test('discovery from the issuer URL alone: keys, introspection endpoint, metadata', async () => {
    assert.match(main.log(), /discovered http:\/\/127\.0\.0\.1:\d+\/\.well-known\/oauth-authorization-server: jwks_uri http:\/\/127\.0\.0\.1:\d+\/jwks, introspection_endpoint http:\/\/127\.0\.0\.1:\d+\/token\/introspection/);
    assert.match(main.log(), /introspecting opaque tokens at .* as client scopegate \(basic\)/);
    const meta = await (await fetch(`${main.origin}/.well-known/oauth-protected-resource/mcp`)).json();
    assert.deepEqual(meta.authorization_servers, [as.issuer]);
    assert.equal(meta.resource, RESOURCE);
});

test('JWT access tokens (resource indicator -> aud) pass with the right scope only', async () => {
    const read = await token('jwt-client', READ);
    assert.equal(read.split('.').length, 3);
    assert.equal((await call(main, read)).status, 200);
    const denied = await call(main, read, 'create_entry');
    assert.equal(denied.status, 403);
    assert.match(denied.www, /insufficient_scope/);
    assert.equal((await call(main, await token('jwt-client', WRITE), 'list_entries')).status, 200);
});

test('opaque tokens: active passes (scope from the answer), garbage is 401, one call per junk token', async () => {
    const before = await asStats();
    const opaque = await token('opaque-client', READ);
    assert.equal(opaque.split('.').length, 1);
    assert.equal((await call(main, opaque)).status, 200);
    const denied = await call(main, opaque, 'create_entry');
    assert.equal(denied.status, 403, 'the scope comes from the introspection answer');
    const junk = randomBytes(24).toString('base64url');
    seenTokens.push(junk);
    const answers = await Promise.all(Array.from({ length: 30 }, () => call(main, junk)));
    for (const a of answers) {
        assert.equal(a.status, 401);
        assert.match(a.www, /error="invalid_token"/);
        assert.match(a.www, /error_description="The token is not active\."/);
    }
    const after = await asStats();
    // one for the opaque token (cached for the second call), one for the junk token
    assert.equal(after.introspection - before.introspection, 2);
});

test('an active answer is believed for its whole --introspection-cache-ttl, not to the end of a clock second', async () => {
    // Asked again 0.6 s into a 1 s TTL, four times: a cache that rounds its
    // deadline down to a whole second forgets 60% of such answers early.
    for (let i = 0; i < 4; i++) {
        const t = await token('opaque-client', READ);
        const before = await asStats();
        assert.equal((await call(main, t)).status, 200);
        await new Promise(r => setTimeout(r, 600));
        assert.equal((await call(main, t)).status, 200);
        const after = await asStats();
        assert.equal(after.introspection - before.introspection, 1, `token ${i}: introspected again within its TTL`);
    }
});

test('client_secret_post authenticates the introspection client too', async () => {
    const gw = await startGateway({
        upstream: journal.url,
        policy,
        keyArgs: ['--issuer', as.issuer],
        extra: ['--introspection-client-id', 'scopegate-post', '--introspection-secret-file', secretFile,
            '--introspection-auth', 'post']
    });
    assert.equal((await call(gw, await token('opaque-client', READ))).status, 200);
    assertLogClean(gw);
    await stop(gw.proc);
});

test('an expired opaque token is refused', async () => {
    const short = await token('short-client', READ); // expires in 2 s
    assert.equal((await call(main, short)).status, 200);
    await new Promise(r => setTimeout(r, 3000));
    const a = await call(main, short);
    assert.equal(a.status, 401);
    assert.match(a.www, /invalid_token/);
});

test('a token revoked at the authorization server is refused once the cache TTL is over', async () => {
    const t = await token('opaque-client', READ);
    assert.equal((await call(main, t)).status, 200);
    const res = await fetch(as.revocation_endpoint, {
        method: 'POST',
        headers: {
            'Content-Type': 'application/x-www-form-urlencoded',
            Authorization: `Basic ${Buffer.from(`opaque-client:${SECRET}`).toString('base64')}`
        },
        body: new URLSearchParams({ token: t })
    });
    assert.equal(res.status, 200);
    await new Promise(r => setTimeout(r, 1500)); // --introspection-cache-ttl 1
    const a = await call(main, t);
    assert.equal(a.status, 401);
    assert.match(a.www, /The token is not active/);
});

test('a slow authorization server delays only the request that waits for it; a timeout is 503', async t => {
    const gw = await gateway(['--threads', '1', '--introspection-timeout-ms', '2500']);
    const cached = await token('opaque-client', READ);
    const jwt = await token('jwt-client', READ);
    assert.equal((await call(gw, cached)).status, 200);
    assert.equal((await call(gw, jwt)).status, 200);
    await setDelay(1500);
    try {
        const fresh = await token('opaque-client', READ);
        const slow = call(gw, fresh);
        await new Promise(r => setTimeout(r, 200)); // the call is under way
        const quick = [];
        for (let i = 0; i < 10; i++) quick.push(await call(gw, i % 2 ? cached : jwt));
        const s = await slow;
        t.diagnostic(`slow: introspected request ${Math.round(s.ms)} ms; meanwhile 10 cached/JWT requests, max ${
            Math.round(Math.max(...quick.map(q => q.ms)))} ms`);
        assert.equal(s.status, 200);
        assert.ok(s.ms >= 1400, `the slow request took ${s.ms} ms`);
        for (const q of quick) {
            assert.equal(q.status, 200);
            assert.ok(q.ms < 700, `a cached/JWT request took ${q.ms} ms while introspection was slow`);
        }
        // Beyond the timeout: the server error is not the token's fault (RFC 6750 3.1).
        await setDelay(5000);
        const late = await call(gw, await token('opaque-client', READ));
        assert.equal(late.status, 503);
        assert.equal(late.www, '');
        t.diagnostic(`slow: 503 after ${Math.round(late.ms)} ms (--introspection-timeout-ms 2500)`);
        assert.ok(late.ms >= 2000 && late.ms < 4500, `timed out after ${late.ms} ms`);
        assert.match(gw.log(), /warn introspection: Timeout was reached \(requests with opaque tokens get 503\)/);
    } finally {
        await setDelay(0);
    }
    assertLogClean(gw);
    await stop(gw.proc);
});

test('a flood of random kids costs at most one JWKS fetch per --jwks-refetch interval', async t => {
    const gw = await gateway(['--jwks-refetch', '600']);
    const before = await asStats();
    const payload = b64url({ iss: as.issuer, aud: RESOURCE, exp: Math.floor(Date.now() / 1000) + 600, scope: READ });
    const forged = Array.from({ length: 40 }, () =>
        `${b64url({ alg: 'RS256', typ: 'at+jwt', kid: randomBytes(8).toString('hex') })}.${payload}.${b64url(randomBytes(256))}`);
    const answers = await Promise.all(forged.map(t => call(gw, t)));
    for (const a of answers) {
        assert.equal(a.status, 401);
        assert.match(a.www, /The token key id is not known/);
    }
    const after = await asStats();
    t.diagnostic(`flood: 40 random kids, ${after.jwks - before.jwks} JWKS fetch(es)`);
    assert.ok(after.jwks - before.jwks <= 1, `${after.jwks - before.jwks} JWKS fetches`);
    await stop(gw.proc);
});

test('a key rotated in at the authorization server is picked up without a restart', async () => {
    const old = await token('jwt-client', READ);
    assert.equal((await call(main, old)).status, 200);
    await stop(as.proc);
    as = await startAs('key-2'); // same port, same issuer, a new key with a new kid
    const rotated = await token('jwt-client', READ);
    assert.equal(JSON.parse(Buffer.from(rotated.split('.')[0], 'base64url')).kid, 'key-2');
    assert.equal((await call(main, rotated)).status, 200);
    assertLogClean(main);
});
