// tests/peers/auth_server.mjs -- a throwaway OAuth 2.1 authorization server for interop tests.
//
// Why it exists: scopegate verifies RS256 JWTs against a JWKS and the official MCP SDK client
// runs the authorization-code + PKCE flow with dynamic client registration. oauth2-mock-server
// signs real tokens and serves /jwks, /authorize and /token, but (checked in 9.3.0) it has no
// registration endpoint, no RFC 8414 metadata path, ignores the scope asked for at /authorize
// (authorization-code tokens always say scope "dummy") and sets no resource audience. This file
// adds exactly those pieces through the mock's own hooks and routes.
//
// Usage: node auth_server.mjs [--port N] [--host 127.0.0.1] [--audience URI]
//                             [--scopes "a b c"] [--ttl SECONDS] [--no-refresh-tokens]
// Env fallbacks: SG_AS_PORT, SG_AUDIENCE, SG_AS_SCOPES, SG_AS_TTL.
// When ready, prints ONE JSON line on stdout:
//   {"issuer":..., "jwks_uri":..., "token_endpoint":..., "authorization_endpoint":...,
//    "registration_endpoint":...}
// Logs go to stderr. Stops on SIGTERM/SIGINT.
//
// Token contents: iss = issuer, aud = --audience (else the RFC 8707 `resource` the client sent),
// scope = the scopes requested at /authorize (auth-code), kept across refresh, or the `scope`
// form field (client_credentials: handy for minting test tokens with plain curl), sub = johndoe,
// client_id = the client.
import { parseArgs } from 'node:util';
import { randomUUID } from 'node:crypto';
import { OAuth2Server, Events } from 'oauth2-mock-server';

const { values: opts } = parseArgs({
    options: {
        port: { type: 'string', default: process.env.SG_AS_PORT ?? '0' },
        host: { type: 'string', default: '127.0.0.1' },
        audience: { type: 'string', default: process.env.SG_AUDIENCE ?? '' },
        scopes: { type: 'string', default: process.env.SG_AS_SCOPES ?? '' },
        ttl: { type: 'string', default: process.env.SG_AS_TTL ?? '3600' },
        'no-refresh-tokens': { type: 'boolean', default: false }
    }
});

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
if (!LOOPBACK.has(opts.host)) {
    console.error(`auth_server: refusing to listen on non-loopback host ${opts.host}`);
    process.exit(2);
}
const port = Number(opts.port);
const ttl = Number(opts.ttl);
if (!Number.isInteger(port) || port < 0 || port > 65535 || !Number.isInteger(ttl) || ttl <= 0) {
    console.error('auth_server: --port must be 0..65535 and --ttl a positive integer');
    process.exit(2);
}
const scopesSupported = opts.scopes.split(/\s+/).filter(Boolean);

// Bounded in-memory state: a test run never needs more, and a runaway client can't grow it.
const MAX_ENTRIES = 10000;
const clients = new Map(); // client_id -> registered metadata
const codes = new Map(); // authorization code -> { scope, resource, clientId }
const refreshTokens = new Map(); // refresh token -> { scope, resource, clientId }
function remember(map, key, value) {
    if (map.size >= MAX_ENTRIES) map.delete(map.keys().next().value);
    map.set(key, value);
}

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

function sendJson(res, status, body) {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify(body));
}

// Metadata: the mock only serves OIDC discovery; the SDK tries RFC 8414 first, then OIDC.
function extendMetadata(body) {
    body.registration_endpoint = `${server.issuer.url}/register`;
    body.grant_types_supported = ['authorization_code', 'refresh_token', 'client_credentials'];
    body.token_endpoint_auth_methods_supported = ['none'];
    if (scopesSupported.length) body.scopes_supported = scopesSupported;
    return body;
}
server.service.on(Events.BeforeWellKnownOpenIdConfiguration, response => extendMetadata(response.body));
server.service.addRoute('GET', '/.well-known/oauth-authorization-server', async (_req, res) => {
    const oidc = await fetch(`${server.issuer.url}/.well-known/openid-configuration`);
    sendJson(res, 200, await oidc.json());
});

// RFC 7591 dynamic client registration, public clients only (PKCE, no secret).
server.service.addRoute('POST', '/register', (req, res) => {
    const meta = req.body;
    const uris = meta && typeof meta === 'object' ? meta.redirect_uris : undefined;
    if (!Array.isArray(uris) || uris.length === 0 || uris.length > 10 || !uris.every(isHttpUrl)) {
        return sendJson(res, 400, {
            error: 'invalid_redirect_uri',
            error_description: 'redirect_uris must be 1..10 http(s) URLs'
        });
    }
    const client = {
        client_id: randomUUID(),
        client_id_issued_at: Math.floor(Date.now() / 1000),
        redirect_uris: uris,
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        ...(typeof meta.client_name === 'string' ? { client_name: meta.client_name } : {}),
        ...(typeof meta.scope === 'string' ? { scope: meta.scope } : {})
    };
    remember(clients, client.client_id, client);
    console.error(`auth_server: registered client ${client.client_id} (${client.client_name ?? 'unnamed'})`);
    sendJson(res, 201, client);
});

function isHttpUrl(value) {
    try {
        const url = new URL(value);
        return url.protocol === 'http:' || url.protocol === 'https:';
    } catch {
        return false;
    }
}

// /authorize auto-approves (no login page): remember what was asked for under the new code.
server.service.on(Events.BeforeAuthorizeRedirect, (redirect, req) => {
    const code = redirect.url.searchParams.get('code');
    if (!code) return;
    const q = req.query ?? {};
    const clientId = typeof q.client_id === 'string' ? q.client_id : undefined;
    const known = clientId ? clients.get(clientId) : undefined;
    if (known && !known.redirect_uris.includes(q.redirect_uri)) {
        // A registered client asking for an unregistered redirect: answer with an error instead.
        redirect.url.searchParams.delete('code');
        redirect.url.searchParams.set('error', 'invalid_request');
        return;
    }
    remember(codes, code, {
        scope: typeof q.scope === 'string' ? q.scope : '',
        resource: typeof q.resource === 'string' ? q.resource : undefined,
        clientId
    });
    console.error(`auth_server: authorize client=${clientId} scope="${q.scope ?? ''}" resource=${q.resource ?? '-'}`);
});

// Which grant a token request stands for, looked up once per request and kept on it.
function grantFor(req) {
    if (req.sgGrant !== undefined) return req.sgGrant;
    const body = req.body ?? {};
    let grant = null;
    if (body.grant_type === 'authorization_code') {
        grant = codes.get(body.code) ?? null;
        codes.delete(body.code); // single use
    } else if (body.grant_type === 'refresh_token') {
        grant = refreshTokens.get(body.refresh_token) ?? null;
    } else if (body.grant_type === 'client_credentials') {
        grant = { scope: typeof body.scope === 'string' ? body.scope : '', clientId: body.client_id };
    }
    if (grant) grant = { ...grant, resource: grant.resource ?? body.resource };
    req.sgGrant = grant;
    return grant;
}

server.service.on(Events.BeforeTokenSigning, (token, req) => {
    // The mock signs an id_token too (same request); only the access token carries `scope`.
    if (!('scope' in token.payload)) return;
    const grant = grantFor(req);
    if (!grant) return; // BeforeResponse turns this into invalid_grant
    token.payload.scope = grant.scope;
    const aud = opts.audience || grant.resource;
    if (aud) token.payload.aud = aud;
    else delete token.payload.aud;
    if (grant.clientId) token.payload.client_id = grant.clientId;
    token.payload.exp = token.payload.iat + ttl;
});

server.service.on(Events.BeforeResponse, (response, req) => {
    if (response.statusCode !== 200) return;
    const grant = grantFor(req);
    if (!grant) {
        response.statusCode = 400;
        response.body = { error: 'invalid_grant', error_description: 'unknown or used code / refresh token' };
        return;
    }
    response.body.scope = grant.scope;
    response.body.expires_in = ttl;
    if (opts['no-refresh-tokens']) delete response.body.refresh_token;
    else if (response.body.refresh_token) remember(refreshTokens, response.body.refresh_token, grant);
    console.error(`auth_server: issued token grant=${req.body?.grant_type} scope="${grant.scope}"`);
});

// Name the loopback address itself: "localhost" may resolve to ::1 first in some clients.
const listenHost = opts.host === 'localhost' ? '127.0.0.1' : opts.host;
const hostInUrl = listenHost.includes(':') ? `[${listenHost}]` : listenHost;
await server.start(port, listenHost);
server.issuer.url = `http://${hostInUrl}:${server.address().port}`;
const issuer = server.issuer.url;
console.log(
    JSON.stringify({
        issuer,
        jwks_uri: `${issuer}/jwks`,
        token_endpoint: `${issuer}/token`,
        authorization_endpoint: `${issuer}/authorize`,
        registration_endpoint: `${issuer}/register`
    })
);

for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
        server.stop().finally(() => process.exit(0));
    });
}
