// tests/interop/stepup.mjs -- shows the official SDK client doing OAuth step-up through an MCP
// endpoint: authorization code + PKCE (with dynamic client registration) for a narrow scope,
// a call that the server refuses with 403 insufficient_scope, re-authorization with exactly the
// challenged `scope`, and a successful retry.
//
// Why it exists: scopegate's challenges are only right if the real client acts on them. This is
// that client, with an OAuthClientProvider that auto-approves: it fetches the authorization URL
// itself (auth_server.mjs approves without a login page) and reads the code from the redirect.
//
// Usage: node stepup.mjs --url MCP_URL [--first-tool list_entries] [--first-args JSON]
//          [--tool create_entry] [--args JSON] [--scope "journal:read"] [--keep-refresh-token]
//          [--allow-no-auth]
// Prints one JSON line per event ({"event":...}) and a last line {"summary":{...}}.
// Exit 0 when the step-up happened as specified (or, with --allow-no-auth, when the server asked
// for no auth at all and both calls succeeded), 1 otherwise, 2 on bad usage.
//
// SDK behaviour this relies on (checked in @modelcontextprotocol/sdk 1.32.2):
// - On 401/403 the transport calls auth(); for an interactive client that ends in
//   redirectToAuthorization() and auth() returns 'REDIRECT', so the request fails with
//   UnauthorizedError. The application then calls transport.finishAuth(code) and retries:
//   that is the SDK's documented pattern, and what this program does.
// - On 403 insufficient_scope the transport REPLACES its scope with the challenged `scope`.
// - If a refresh token is stored, auth() refreshes instead of re-authorizing, and a refresh
//   cannot widen scope, so the retry gets the same 403 and the SDK gives up ("Server returned
//   403 after trying upscoping"). The provider therefore drops refresh tokens unless
//   --keep-refresh-token is given (which demonstrates that failure).
import { parseArgs } from 'node:util';
import { randomUUID } from 'node:crypto';
import { Client, StreamableHTTPClientTransport, UnauthorizedError, jose } from './sdk.mjs';

function usage(message) {
    console.error(`stepup.mjs: ${message}`);
    process.exit(2);
}
let opts;
try {
    ({ values: opts } = parseArgs({
        options: {
            url: { type: 'string' },
            'first-tool': { type: 'string', default: 'list_entries' },
            'first-args': { type: 'string', default: '{}' },
            tool: { type: 'string', default: 'create_entry' },
            args: { type: 'string', default: '{"title":"step-up","body":"written after step-up"}' },
            scope: { type: 'string' },
            'keep-refresh-token': { type: 'boolean', default: false },
            'allow-no-auth': { type: 'boolean', default: false }
        }
    }));
} catch (err) {
    usage(err.message);
}
if (!opts.url) usage('--url is required');
let firstArgs, toolArgs;
try {
    firstArgs = JSON.parse(opts['first-args']);
    toolArgs = JSON.parse(opts.args);
} catch (err) {
    usage(`bad JSON arguments: ${err.message}`);
}

const events = [];
function emit(event) {
    events.push(event);
    process.stdout.write(JSON.stringify(event) + '\n');
}

// Never listened on: the code is read from the Location header of the authorization response.
const REDIRECT_URL = 'http://127.0.0.1:9/oauth/callback';

class AutoApproveProvider {
    constructor() {
        this.client = undefined;
        this.savedTokens = undefined;
        this.verifier = undefined;
        this.expectedState = undefined;
        this.pendingCode = undefined;
        this.authorizations = []; // scopes asked for, in order
    }
    get redirectUrl() {
        return REDIRECT_URL;
    }
    get clientMetadata() {
        return {
            client_name: 'scopegate stepup interop',
            redirect_uris: [REDIRECT_URL],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
            ...(opts.scope ? { scope: opts.scope } : {})
        };
    }
    state() {
        this.expectedState = randomUUID();
        return this.expectedState;
    }
    clientInformation() {
        return this.client;
    }
    saveClientInformation(info) {
        this.client = info;
        emit({ event: 'registered', client_id: info.client_id });
    }
    tokens() {
        return this.savedTokens;
    }
    saveTokens(tokens) {
        const kept = { ...tokens };
        if (!opts['keep-refresh-token']) delete kept.refresh_token;
        this.savedTokens = kept;
        let claims = {};
        try {
            claims = jose.decodeJwt(tokens.access_token);
        } catch {
            // opaque token: nothing to show
        }
        emit({ event: 'token', scope: tokens.scope, claims_scope: claims.scope, aud: claims.aud });
    }
    saveCodeVerifier(verifier) {
        this.verifier = verifier;
    }
    codeVerifier() {
        if (!this.verifier) throw new Error('no code verifier saved');
        return this.verifier;
    }
    async redirectToAuthorization(authorizationUrl) {
        const scope = authorizationUrl.searchParams.get('scope') ?? '';
        this.authorizations.push(scope);
        emit({ event: 'authorize', scope, resource: authorizationUrl.searchParams.get('resource') ?? undefined });
        const response = await fetch(authorizationUrl, { redirect: 'manual' });
        const location = response.headers.get('location');
        if (response.status < 300 || response.status > 399 || !location) {
            throw new Error(`authorization endpoint answered ${response.status} without a redirect`);
        }
        const back = new URL(location);
        if (back.searchParams.get('state') !== this.expectedState) throw new Error('state mismatch on redirect');
        const code = back.searchParams.get('code');
        if (!code) throw new Error(`authorization refused: ${back.searchParams.get('error') ?? 'no code'}`);
        this.pendingCode = code;
    }
}

const provider = new AutoApproveProvider();

async function recordingFetch(input, init) {
    const response = await fetch(input, init);
    if (response.status === 401 || response.status === 403) {
        emit({
            event: 'challenge',
            status: response.status,
            www_authenticate: response.headers.get('www-authenticate') ?? undefined
        });
    }
    return response;
}
function newTransport() {
    return new StreamableHTTPClientTransport(new URL(opts.url), { authProvider: provider, fetch: recordingFetch });
}

let transport = newTransport();
const client = new Client({ name: 'scopegate-stepup-interop', version: '1.0.0' });

// Runs fn; if the SDK stopped for a browser redirect, completes it with the captured code and
// runs fn once more (the SDK's interactive pattern, without the browser).
async function withAuthorization(fn, reconnect) {
    try {
        return await fn();
    } catch (err) {
        if (!(err instanceof UnauthorizedError) || !provider.pendingCode) throw err;
        const code = provider.pendingCode;
        provider.pendingCode = undefined;
        await transport.finishAuth(code);
        if (reconnect) transport = newTransport();
        return await fn();
    }
}

let exitCode = 1;
const summary = {};
try {
    await withAuthorization(() => client.connect(transport), true);
    emit({ event: 'connected' });
    const first = await withAuthorization(() =>
        client.callTool({ name: opts['first-tool'], arguments: firstArgs })
    );
    emit({ event: 'result', tool: opts['first-tool'], isError: first.isError ?? false });
    const before = provider.authorizations.length;
    const second = await withAuthorization(() => client.callTool({ name: opts.tool, arguments: toolArgs }));
    emit({ event: 'result', tool: opts.tool, isError: second.isError ?? false, content: second.content });

    const challenges = events.filter(e => e.event === 'challenge' && e.status === 403);
    const lastChallenge = challenges.at(-1)?.www_authenticate ?? '';
    const challengedScope = /scope="([^"]*)"/.exec(lastChallenge)?.[1];
    const stepScope = provider.authorizations.slice(before).at(-1);
    Object.assign(summary, {
        authorizations: provider.authorizations,
        challenged_scope: challengedScope,
        stepped_up: challenges.length > 0 && stepScope !== undefined,
        reauthorized_with_challenged_scope: stepScope !== undefined && stepScope === challengedScope,
        first_ok: !first.isError,
        retry_ok: !second.isError
    });
    const noAuth = provider.authorizations.length === 0 && opts['allow-no-auth'];
    if (summary.first_ok && summary.retry_ok && (noAuth || summary.reauthorized_with_challenged_scope)) exitCode = 0;
} catch (err) {
    summary.error = err instanceof Error ? err.message : String(err);
    summary.authorizations = provider.authorizations;
} finally {
    await client.close().catch(() => {});
}
summary.ok = exitCode === 0;
process.stdout.write(JSON.stringify({ summary }) + '\n');
process.exit(exitCode);
