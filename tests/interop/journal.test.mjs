// tests/interop/journal.test.mjs -- the journal example (examples/journal/server.mjs, stateless,
// SSE answers) behind the real scopegate binary with policies/examples/journal.lua, driven by
// the official SDK client (client.mjs, stepup.mjs) with tokens from tests/peers/auth_server.mjs.
//
// Why it exists: the journal and its policy are what the README and ./run show users; this keeps
// that example working end to end with a real client and a real authorization server, including
// the SDK's step-up and the refresh-token pitfall documented in docs/interop.md.
//
// Two gateways:
// - "live": the example policy with only `resource` and `authorization_servers` replaced by the
//   live URLs (lib.policyWithOverrides), so the SDK's discovery and audience checks work;
// - "as shipped": the example policy unchanged, `--audience` = its resource
//   (https://journal.example.com/mcp), as a deployment behind a reverse proxy would run it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
    root, startAuthServer, startJournal, startGateway, policyWithOverrides, stopAll, client, runNode, mintToken
} from './lib.mjs';

const POLICY = path.join(root, 'policies', 'examples', 'journal.lua');
const RESOURCE = 'https://journal.example.com/mcp'; // the policy's `resource`
const READ = 'journal:entries:read';
const WRITE = 'journal:entries:write';
const ADMIN = 'journal:admin';
let as, journal, live, shipped;

before(async () => {
    [as, journal] = await Promise.all([startAuthServer(['--scopes', `${READ} ${WRITE} ${ADMIN}`]), startJournal()]);
    const keyArgs = ['--jwks', as.jwks_uri, '--issuer', as.issuer];
    [live, shipped] = await Promise.all([
        startGateway({
            upstream: journal.url,
            policy: url => policyWithOverrides(POLICY, { resource: url, authorization_servers: [as.issuer] }),
            keyArgs
        }),
        startGateway({ upstream: journal.url, policy: POLICY, keyArgs, extra: ['--audience', RESOURCE] })
    ]);
});

after(stopAll);

const metadata = gw => `${gw.origin}/.well-known/oauth-protected-resource/mcp`;
const why = (r, gw = live) => `${JSON.stringify(r.last)}\n--- scopegate log:\n${gw.log().slice(-3000)}`;
const token = scope => mintToken(as, scope, live.url);

test('anonymous: ping is public, list_entries is 401 with the advertised scope', async () => {
    const ping = await client(live.url, null, 'call', 'ping', '{}');
    assert.equal(ping.code, 0, why(ping));
    assert.equal(ping.last.result.content[0].text, 'pong');
    const r = await client(live.url, null, 'call', 'list_entries', '{}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 401);
    assert.equal(r.last.error.www_authenticate,
        `Bearer realm="journal", scope="${READ}", resource_metadata="${metadata(live)}"`);
});

test('read token: lists the readable tools, reads an entry, a resource and a prompt', async () => {
    const read = await token(READ);
    const list = await client(live.url, read, 'list-tools');
    assert.equal(list.code, 0, why(list));
    assert.deepEqual(list.last.result.tools.map(t => t.name), ['list_entries', 'get_entry', 'ping']);
    const entry = await client(live.url, read, 'call', 'get_entry', '{"id":"1"}');
    assert.equal(entry.code, 0, why(entry));
    assert.equal(entry.last.result.structuredContent.id, '1');
    const resource = await client(live.url, read, 'read', 'journal://entries/1');
    assert.equal(resource.code, 0, why(resource));
    assert.equal(JSON.parse(resource.last.result.contents[0].text).title, 'Gateway design notes');
    const prompt = await client(live.url, read, 'get-prompt', 'summarize_week', '{"week_start":"2000-01-03"}');
    assert.equal(prompt.code, 0, why(prompt));
    assert.equal(prompt.last.result.messages[0].content.text,
        'Summarize my journal for the week starting 2000-01-03 in three sentences.\n(no entries)');
});

test('read token: create_entry is 403 insufficient_scope with granted + required', async () => {
    const r = await client(live.url, await token(READ), 'call', 'create_entry', '{"title":"t","body":"b"}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 403);
    assert.equal(r.last.error.www_authenticate,
        `Bearer realm="journal", error="insufficient_scope", scope="${READ} ${WRITE}", ` +
        `resource_metadata="${metadata(live)}", error_description="Scope ${WRITE} is required."`);
});

test('write token (implies read): every tool listed; permanent deletion needs journal:admin', async () => {
    const write = await token(WRITE);
    const list = await client(live.url, write, 'list-tools');
    assert.equal(list.code, 0, why(list));
    assert.deepEqual(list.last.result.tools.map(t => t.name),
        ['list_entries', 'get_entry', 'create_entry', 'update_entry', 'tag_entry', 'delete_entry', 'ping']);
    const created = await client(live.url, write, 'call', 'create_entry', '{"title":"interop","body":"b","tags":["x"]}');
    assert.equal(created.code, 0, why(created));
    const id = created.last.result.structuredContent.id;
    const tagged = await client(live.url, write, 'call', 'tag_entry', JSON.stringify({ id, tags: ['y'] }));
    assert.deepEqual(tagged.last.result.structuredContent.tags, ['x', 'y']);
    const erase = JSON.stringify({ id, permanent: true });
    const refused = await client(live.url, write, 'call', 'delete_entry', erase);
    assert.equal(refused.code, 1, why(refused));
    assert.equal(refused.last.error.http_status, 403);
    assert.match(refused.last.error.www_authenticate,
        new RegExp(`^Bearer realm="journal", error="insufficient_scope", scope="${ADMIN} ${WRITE}", `));
    assert.match(refused.last.error.www_authenticate, /error_description="[^"]*permanent deletion[^"]*"$/);
    const trash = await client(live.url, write, 'call', 'delete_entry', JSON.stringify({ id }));
    assert.equal(trash.last.result.structuredContent.deleted, 'trashed');
    const erased = await client(live.url, await token(ADMIN), 'call', 'delete_entry', erase);
    assert.equal(erased.code, 0, why(erased));
    assert.equal(erased.last.result.structuredContent.deleted, 'permanently');
});

test('SDK step-up: authorize for the 401 scope, re-authorize with exactly the 403 scope, retry succeeds', async () => {
    const r = await runNode('stepup.mjs', ['--url', live.url]);
    assert.equal(r.code, 0, `${JSON.stringify(r.lines)}\n${live.log().slice(-3000)}`);
    assert.deepEqual(r.lines.filter(l => l.event === 'challenge').map(l => l.status), [401, 403]);
    assert.deepEqual(r.last.summary.authorizations, [READ, `${READ} ${WRITE}`]);
    assert.equal(r.last.summary.challenged_scope, `${READ} ${WRITE}`);
    const tokens = r.lines.filter(l => l.event === 'token');
    assert.deepEqual(tokens.map(l => l.claims_scope), [READ, `${READ} ${WRITE}`]);
    assert.deepEqual(tokens.map(l => l.aud), [live.url, live.url]);
});

test('SDK step-up with a stored refresh token: it refreshes, gets the same 403 and gives up (SDK 1.32.2)', async () => {
    const r = await runNode('stepup.mjs', ['--url', live.url, '--keep-refresh-token']);
    assert.equal(r.code, 1, JSON.stringify(r.lines));
    assert.equal(r.last.summary.error, 'Streamable HTTP error: Server returned 403 after trying upscoping');
});

test('as shipped: metadata says the policy resource, tokens must carry it as audience', async () => {
    const meta = await (await fetch(metadata(shipped))).json();
    assert.equal(meta.resource, RESOURCE);
    assert.deepEqual(meta.authorization_servers, ['https://auth.example.com']);
    const good = await mintToken(as, READ, RESOURCE);
    const ok = await client(shipped.url, good, 'call', 'get_entry', '{"id":"2"}');
    assert.equal(ok.code, 0, why(ok, shipped));
    assert.equal(ok.last.result.structuredContent.id, '2');
    const wrongAudience = await mintToken(as, READ, shipped.url);
    const r = await client(shipped.url, wrongAudience, 'call', 'get_entry', '{"id":"2"}');
    assert.equal(r.code, 1, why(r, shipped));
    assert.equal(r.last.error.http_status, 401);
    assert.match(r.last.error.www_authenticate, /^Bearer realm="journal", error="invalid_token"/);
});
