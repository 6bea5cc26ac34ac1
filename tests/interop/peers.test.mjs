// tests/interop/peers.test.mjs -- the interop peers on their own, without scopegate: the
// authorization server (tests/peers/auth_server.mjs), the journal example and server-everything,
// driven by the same SDK programs the gateway tests use.
//
// Why it exists: when a gateway test fails, this file says whether the peer or the gateway is
// at fault; each claim about the peers in docs/interop.md is checked here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { jose } from './sdk.mjs';
import { startAuthServer, startJournal, startEverything, stopAll, client, runNode, mintToken } from './lib.mjs';

const SCOPES = 'journal:entries:read journal:entries:write journal:admin';
const RESOURCE = 'https://journal.example.com/mcp';
let as, journal, everything;

before(async () => {
    [as, journal, everything] = await Promise.all([
        startAuthServer(['--scopes', SCOPES]),
        startJournal(),
        startEverything()
    ]);
});

after(stopAll);

const clientCredentialsToken = scope => mintToken(as, scope, RESOURCE);

test('auth server: RFC 8414 metadata advertises DCR, PKCE S256 and the scopes', async () => {
    const meta = await (await fetch(`${as.issuer}/.well-known/oauth-authorization-server`)).json();
    assert.equal(meta.issuer, as.issuer);
    assert.equal(meta.registration_endpoint, `${as.issuer}/register`);
    assert.equal(meta.token_endpoint, as.token_endpoint);
    assert.equal(meta.jwks_uri, as.jwks_uri);
    assert.ok(meta.code_challenge_methods_supported.includes('S256'));
    assert.deepEqual(meta.scopes_supported, SCOPES.split(' '));
});

test('auth server: dynamic registration, bad redirect_uris refused', async () => {
    const ok = await fetch(`${as.issuer}/register`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ redirect_uris: ['http://127.0.0.1:9/cb'], client_name: 't' })
    });
    assert.equal(ok.status, 201);
    const registered = await ok.json();
    assert.match(registered.client_id, /^[0-9a-f-]{36}$/);
    assert.equal(registered.token_endpoint_auth_method, 'none');
    const bad = await fetch(`${as.issuer}/register`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ redirect_uris: ['javascript:alert(1)'] })
    });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).error, 'invalid_redirect_uri');
});

test('auth server: tokens are RS256, verify against the JWKS, carry aud and the asked scope', async () => {
    const token = await clientCredentialsToken('journal:entries:read journal:entries:write');
    const jwks = jose.createRemoteJWKSet(new URL(as.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer: as.issuer, audience: RESOURCE });
    assert.equal(protectedHeader.alg, 'RS256');
    assert.equal(payload.scope, 'journal:entries:read journal:entries:write');
    assert.equal(payload.aud, RESOURCE);
});

test('auth server: an unknown authorization code is invalid_grant', async () => {
    const res = await fetch(as.token_endpoint, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'authorization_code', code: 'nope', redirect_uri: 'http://127.0.0.1:9/cb' })
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error, 'invalid_grant');
});

test('journal: tools and their annotations', async () => {
    const r = await client(journal.url, null, 'list-tools');
    assert.equal(r.code, 0);
    const hints = Object.fromEntries(
        r.last.result.tools.map(t => [t.name, [t.annotations.readOnlyHint, t.annotations.destructiveHint]])
    );
    assert.deepEqual(hints, {
        list_entries: [true, false],
        get_entry: [true, false],
        create_entry: [false, false],
        update_entry: [false, true],
        tag_entry: [false, false],
        delete_entry: [false, true],
        ping: [true, false]
    });
    const del = r.last.result.tools.find(t => t.name === 'delete_entry');
    assert.equal(del.inputSchema.properties.permanent.type, 'boolean');
});

test('journal: create, tag, trash, erase', async () => {
    const c = await client(journal.url, null, 'call', 'create_entry',
        JSON.stringify({ title: 'interop', body: 'b', tags: ['x'] }));
    assert.equal(c.code, 0);
    const id = c.last.result.structuredContent.id;
    const t = await client(journal.url, null, 'call', 'tag_entry',
        JSON.stringify({ id, tags: ['y', 'x'] }));
    assert.deepEqual(t.last.result.structuredContent.tags, ['x', 'y']);
    const trash = await client(journal.url, null, 'call', 'delete_entry', JSON.stringify({ id }));
    assert.equal(trash.last.result.structuredContent.deleted, 'trashed');
    const gone = await client(journal.url, null, 'call', 'get_entry', JSON.stringify({ id }));
    assert.equal(gone.code, 0);
    assert.equal(gone.last.result.isError, true);
    const erase = await client(journal.url, null, 'call', 'delete_entry',
        JSON.stringify({ id, permanent: true }));
    assert.equal(erase.last.result.structuredContent.deleted, 'permanently');
});

test('journal: resource template, prompt, and 405 for GET (stateless)', async () => {
    const r = await client(journal.url, null, 'read', 'journal://entries/1');
    assert.equal(JSON.parse(r.last.result.contents[0].text).title, 'Gateway design notes');
    const p = await client(journal.url, null, 'get-prompt', 'summarize_week',
        JSON.stringify({ week_start: '2000-01-03' }));
    assert.equal(p.last.result.messages[0].content.text,
        'Summarize my journal for the week starting 2000-01-03 in three sentences.\n(no entries)');
    const get = await fetch(journal.url, { headers: { Accept: 'text/event-stream' } });
    assert.equal(get.status, 405);
});

test('server-everything upstream answers the SDK client', async () => {
    const r = await client(everything.url, null, 'call', 'get-sum', '{"a":2,"b":3}');
    assert.equal(r.code, 0);
    assert.equal(r.last.result.content[0].text, 'The sum of 2 and 3 is 5.');
});

test('stepup.mjs straight at an unauthenticated upstream: no auth, both calls succeed', async () => {
    const r = await runNode('stepup.mjs', ['--url', journal.url, '--allow-no-auth']);
    assert.equal(r.code, 0);
    assert.deepEqual(r.last.summary.authorizations, []);
});

