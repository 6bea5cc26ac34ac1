// tests/peers/oidc_server.mjs -- a real authorization server (oidc-provider) for the acceptance
// tests of scopegate's issuer discovery, JWT access tokens and RFC 7662 introspection
// (tests/interop/authserver.test.mjs).
//
// Why it exists: tests/peers/auth_server.mjs is a mock that only signs JWTs. These tests need what
// a production authorization server does: OpenID Connect discovery, RFC 8707 resource indicators
// deciding the access-token format, opaque tokens that can be introspected and revoked, and a key
// set that rotates. oidc-provider is a certified OpenID provider, configured here for exactly that:
//   - client "jwt-client":    client_credentials; with resource=<--audience> it gets a JWT (RS256,
//                             at+jwt) whose aud is that resource;
//   - client "opaque-client": the same, but its tokens for that resource are opaque;
//   - client "short-client":  opaque tokens that expire after --short-ttl seconds;
//   - client "scopegate":     the introspection client (client_secret_basic or _post).
// Every client's secret is --secret. Key rotation: restart with the same --port and another
// --kid (a fresh RSA key is generated at every start).
//
// Usage: node oidc_server.mjs --port N --audience URI [--scopes "a b"] [--kid K] [--secret S]
//                             [--short-ttl SECONDS]
// When ready, prints ONE JSON line on stdout: {"issuer", "token_endpoint", "jwks_uri",
// "introspection_endpoint", "revocation_endpoint", "kid"}. Logs go to stderr. Stops on SIGTERM.
//
// Test hooks (loopback only, under /_test/): GET /_test/stats -> {"jwks": N, "introspection": N}
// (requests seen, for the "one JWKS fetch per interval" test); POST /_test/delay?ms=N delays every
// introspection answer by N ms from then on (a slow authorization server).
import { parseArgs } from 'node:util';
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

// oidc-provider prints notices with console.log/info: stdout is for the ready line only.
console.log = console.info = console.warn = (...args) => console.error(...args);

const { values: opts } = parseArgs({
    options: {
        port: { type: 'string', default: '0' },
        audience: { type: 'string' },
        scopes: { type: 'string', default: 'notes:read notes:write' },
        kid: { type: 'string', default: 'key-1' },
        secret: { type: 'string', default: 'test-secret-0123456789abcdef' },
        'short-ttl': { type: 'string', default: '2' }
    }
});
if (!opts.audience) {
    console.error('oidc_server: --audience is required');
    process.exit(2);
}
const port = Number(opts.port);
const shortTtl = Number(opts['short-ttl']);

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: opts.kid, alg: 'RS256', use: 'sig' };

// The listening port must be known before the provider is built (it is in the issuer).
const server = http.createServer();
await new Promise(resolve => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const client = (id, extra = {}) => ({
    client_id: id,
    client_secret: opts.secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: opts.scopes,
    token_endpoint_auth_method: 'client_secret_basic',
    ...extra
});

const provider = new Provider(issuer, {
    clients: [
        client('jwt-client'),
        client('opaque-client'),
        client('short-client'),
        client('scopegate'),
        client('scopegate-post', { token_endpoint_auth_method: 'client_secret_post' })
    ],
    jwks: { keys: [jwk] },
    ttl: { ClientCredentials: (ctx, token, c) => (c.clientId === 'short-client' ? shortTtl : 600) },
    scopes: opts.scopes.split(/\s+/).filter(Boolean),
    features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: { enabled: true },
        revocation: { enabled: true },
        resourceIndicators: {
            enabled: true,
            defaultResource: () => undefined,
            useGrantedResource: () => true,
            // RFC 8707: the resource decides the token's audience and format.
            getResourceServerInfo: (ctx, resourceIndicator, c) => {
                if (resourceIndicator !== opts.audience) throw new Error('unknown resource');
                const jwt = c.clientId === 'jwt-client';
                return {
                    scope: opts.scopes,
                    audience: resourceIndicator,
                    accessTokenTTL: c.clientId === 'short-client' ? shortTtl : 600,
                    accessTokenFormat: jwt ? 'jwt' : 'opaque',
                    ...(jwt ? { jwt: { sign: { alg: 'RS256' } } } : {})
                };
            }
        }
    }
});
provider.on('server_error', (ctx, err) => console.error('oidc_server: server_error', err));

const stats = { jwks: 0, introspection: 0 };
let introspectionDelayMs = 0;
const callback = provider.callback();
const jwksPath = new URL(`${issuer}/jwks`).pathname;
server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/_test/stats') {
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify(stats));
        return;
    }
    if (url.pathname === '/_test/delay' && req.method === 'POST') {
        introspectionDelayMs = Number(url.searchParams.get('ms') ?? 0);
        res.end('ok');
        return;
    }
    if (url.pathname === jwksPath) stats.jwks++;
    if (url.pathname === '/token/introspection') {
        stats.introspection++;
        if (introspectionDelayMs > 0) {
            setTimeout(() => callback(req, res), introspectionDelayMs);
            return;
        }
    }
    callback(req, res);
});

const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
process.stdout.write(JSON.stringify({
    issuer,
    token_endpoint: meta.token_endpoint,
    jwks_uri: meta.jwks_uri,
    introspection_endpoint: meta.introspection_endpoint,
    revocation_endpoint: meta.revocation_endpoint,
    kid: opts.kid
}) + '\n');

const shutdown = () => server.close(() => process.exit(0));
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
