// tests/interop/everything.test.mjs -- end to end through the real scopegate binary: the
// official MCP SDK client (Streamable HTTP) -> scopegate -> @modelcontextprotocol/server-everything,
// with tokens from a real authorization server (oauth2-mock-server, tests/peers/auth_server.mjs)
// whose JWKS scopegate fetches over HTTP.
//
// Why it exists: this is the acceptance test of the gateway against third-party programs we do
// not control: a stateful upstream that answers in SSE with sessions, and a client whose OAuth
// step-up only works if our 401/403 challenges and protected resource metadata are right.
//
// Policy: tests/interop/policies/everything.lua (echo public; get-sum & co. everything:read;
// trigger-long-running-operation & toggle-simulated-logging everything:admin; the rest denied),
// bound at run time to the live auth server (authorization_servers) by lib.policyWithOverrides.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
    here, startAuthServer, startEverything, startGateway, policyWithOverrides, stopAll, stop, client,
    runNode, mintToken, rawSession
} from './lib.mjs';

const POLICY = path.join(here, 'policies', 'everything.lua');
const READ_TOOLS = ['echo', 'get-annotated-message', 'get-structured-content', 'get-sum', 'get-tiny-image'];
const ADMIN_TOOLS = [...READ_TOOLS, 'toggle-simulated-logging', 'trigger-long-running-operation'];
let as, upstream, gw, metadataUrl;

before(async () => {
    [as, upstream] = await Promise.all([
        startAuthServer(['--scopes', 'everything:read everything:admin']),
        startEverything()
    ]);
    gw = await startGateway({
        upstream: upstream.url,
        policy: policyWithOverrides(POLICY, { authorization_servers: [as.issuer] }),
        keyArgs: ['--jwks', as.jwks_uri, '--issuer', as.issuer]
    });
    metadataUrl = `${gw.origin}/.well-known/oauth-protected-resource/mcp`;
});

after(stopAll);

const token = scope => mintToken(as, scope, gw.url);
const names = r => r.last.result.tools.map(t => t.name);
// Everything the test saw, for assertion messages: the gateway's log says why it refused.
const why = r => `${JSON.stringify(r.last)}\n--- scopegate log:\n${gw.log().slice(-3000)}`;

test('protected resource metadata names the live auth server and the advertised scope', async () => {
    const res = await fetch(metadataUrl);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
        resource: gw.url,
        authorization_servers: [as.issuer],
        scopes_supported: ['everything:read'],
        bearer_methods_supported: ['header'],
        resource_name: 'everything'
    });
});

test('anonymous: only the public tool is listed, and it can be called', async () => {
    const list = await client(gw.url, null, 'list-tools');
    assert.equal(list.code, 0, why(list));
    assert.deepEqual(names(list), ['echo']);
    const echo = await client(gw.url, null, 'call', 'echo', '{"message":"through scopegate"}');
    assert.equal(echo.code, 0, why(echo));
    assert.deepEqual(echo.last.result.content, [{ type: 'text', text: 'Echo: through scopegate' }]);
});

test('anonymous: a scoped tool is 401 with the scope and resource_metadata to ask for', async () => {
    const r = await client(gw.url, null, 'call', 'get-sum', '{"a":2,"b":3}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 401);
    assert.equal(r.last.error.www_authenticate,
        `Bearer realm="everything", scope="everything:read", resource_metadata="${metadataUrl}"`);
});

test('everything:read: lists exactly the permitted tools', async () => {
    const list = await client(gw.url, await token('everything:read'), 'list-tools');
    assert.equal(list.code, 0, why(list));
    assert.deepEqual(names(list), READ_TOOLS);
    // The upstream's own annotations survive the rewrite.
    assert.equal(list.last.result.tools.find(t => t.name === 'get-sum').annotations.readOnlyHint, true);
});

// The SDK client's schema drops unknown annotation keys, so this looks at the wire.
test('kept tools carry annotations.oauthScope on the wire (nothing for the public one)', async () => {
    const session = await rawSession(gw.url, await token('everything:admin'));
    const r = await session.request('tools/list');
    assert.equal(r.status, 200, r.text);
    const scopes = Object.fromEntries(r.message.result.tools.map(t => [t.name, t.annotations?.oauthScope ?? null]));
    assert.deepEqual(scopes, {
        echo: null,
        'get-annotated-message': 'everything:read',
        'get-structured-content': 'everything:read',
        'get-sum': 'everything:read',
        'get-tiny-image': 'everything:read',
        'toggle-simulated-logging': 'everything:admin',
        'trigger-long-running-operation': 'everything:admin'
    });
    assert.equal(r.message.id, 2);
});

test('everything:read: a permitted tool is called through to the upstream', async () => {
    const r = await client(gw.url, await token('everything:read'), 'call', 'get-sum', '{"a":2,"b":3}');
    assert.equal(r.code, 0, why(r));
    assert.deepEqual(r.last.result.content, [{ type: 'text', text: 'The sum of 2 and 3 is 5.' }]);
});

test('everything:read: an admin tool is 403 insufficient_scope naming granted + required scopes', async () => {
    const r = await client(gw.url, await token('everything:read'), 'call', 'trigger-long-running-operation',
        '{"duration":0.2,"steps":2}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 403);
    assert.equal(r.last.error.www_authenticate,
        `Bearer realm="everything", error="insufficient_scope", scope="everything:admin everything:read", ` +
        `resource_metadata="${metadataUrl}", error_description="Scope everything:admin is required."`);
});

test('a tool the policy does not name is hidden and refused (403, no step-up hint)', async () => {
    const r = await client(gw.url, await token('everything:admin'), 'call', 'get-env', '{}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 403);
    assert.equal(r.last.error.www_authenticate, undefined);
    assert.match(r.last.error.message, /"code":-32003/);
});

test('everything:admin (implies read): lists the admin tools and runs the long-running one', async () => {
    const admin = await token('everything:admin');
    const list = await client(gw.url, admin, 'list-tools');
    assert.equal(list.code, 0, why(list));
    assert.deepEqual(names(list), ADMIN_TOOLS);
    const r = await client(gw.url, admin, 'call', 'trigger-long-running-operation', '{"duration":0.2,"steps":2}');
    assert.equal(r.code, 0, why(r));
    assert.equal(r.last.result.content[0].text, 'Long running operation completed. Duration: 0.2 seconds, Steps: 2.');
});

test('prompts and resources are filtered by the same policy', async () => {
    const anonymous = await client(gw.url, null, 'list-prompts');
    assert.equal(anonymous.code, 0, why(anonymous));
    assert.deepEqual(anonymous.last.result.prompts, []);
    const read = await token('everything:read');
    const prompts = await client(gw.url, read, 'list-prompts');
    assert.equal(prompts.code, 0, why(prompts));
    assert.deepEqual(prompts.last.result.prompts.map(p => p.name), ['simple-prompt', 'args-prompt']);
    const resources = await client(gw.url, read, 'list-resources');
    assert.equal(resources.code, 0, why(resources));
    const uris = resources.last.result.resources.map(r => r.uri);
    assert.ok(uris.length > 0, why(resources));
    assert.deepEqual(uris.filter(u => !u.startsWith('demo://resource/static/')), []);
    const doc = await client(gw.url, read, 'read', uris[0]);
    assert.equal(doc.code, 0, why(doc));
    assert.equal(doc.last.result.contents[0].uri, uris[0]);
});

test('a token for another audience is 401 invalid_token', async () => {
    const other = await mintToken(as, 'everything:admin', 'http://127.0.0.1:1/mcp');
    const r = await client(gw.url, other, 'call', 'get-sum', '{"a":1,"b":1}');
    assert.equal(r.code, 1, why(r));
    assert.equal(r.last.error.http_status, 401);
    assert.match(r.last.error.www_authenticate, /^Bearer realm="everything", error="invalid_token"/);
});

test('SDK OAuth provider: 401 -> authorize read, 403 -> re-authorize with the challenged scope, retry succeeds', async () => {
    const r = await runNode('stepup.mjs', ['--url', gw.url, '--first-tool', 'get-sum', '--first-args', '{"a":2,"b":3}',
        '--tool', 'trigger-long-running-operation', '--args', '{"duration":0.2,"steps":2}']);
    assert.equal(r.code, 0, `${JSON.stringify(r.lines)}\n${gw.log().slice(-3000)}`);
    const challenges = r.lines.filter(l => l.event === 'challenge').map(l => l.status);
    assert.deepEqual(challenges, [401, 403]);
    assert.deepEqual(r.last.summary.authorizations, ['everything:read', 'everything:admin everything:read']);
    assert.equal(r.last.summary.challenged_scope, 'everything:admin everything:read');
    const tokens = r.lines.filter(l => l.event === 'token');
    assert.deepEqual(tokens.map(l => l.claims_scope), ['everything:read', 'everything:admin everything:read']);
    assert.deepEqual(tokens.map(l => l.aud), [gw.url, gw.url]);
    const result = r.lines.filter(l => l.event === 'result').at(-1);
    assert.equal(result.content[0].text, 'Long running operation completed. Duration: 0.2 seconds, Steps: 2.');
});

test('scopegate exits 0 on SIGTERM', async () => {
    assert.deepEqual(await stop(gw.proc), { code: 0, signal: null });
});
