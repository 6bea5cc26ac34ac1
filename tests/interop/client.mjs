// tests/interop/client.mjs -- a command-line MCP client built on the official TypeScript SDK
// (Streamable HTTP), for driving scopegate or an upstream by hand or from tests.
//
// Why it exists: the gateway must interoperate with the SDK's real client, not with our idea of
// it; this prints what that client sees, including the HTTP status and WWW-Authenticate
// challenge of an auth failure (the SDK's error only carries the status, so a fetch wrapper
// records the headers).
//
// Usage:
//   node client.mjs --url URL [--token T] list-tools
//   node client.mjs --url URL [--token T] call TOOL JSON_ARGS
//   node client.mjs --url URL [--token T] list-resources | read URI | list-prompts | get-prompt NAME JSON_ARGS
// Prints ONE JSON object on stdout:
//   success: {"ok":true,"result":<the SDK result>}                                 exit 0
//   failure: {"ok":false,"error":{"message","code","http_status","www_authenticate"}} exit 1
//   usage errors: message on stderr, exit 2.
// A tool result with isError:true is a successful protocol exchange: ok:true, exit 0.
import { parseArgs } from 'node:util';
import { Client, StreamableHTTPClientTransport } from './sdk.mjs';

const USAGE =
    'usage: client.mjs --url URL [--token T] [--timeout-ms N] ' +
    '(list-tools | call TOOL JSON | list-resources | read URI | list-prompts | get-prompt NAME JSON)';

function usage(message) {
    console.error(`client.mjs: ${message}\n${USAGE}`);
    process.exit(2);
}

let parsed;
try {
    parsed = parseArgs({
        allowPositionals: true,
        options: {
            url: { type: 'string' },
            token: { type: 'string' },
            'timeout-ms': { type: 'string', default: '30000' }
        }
    });
} catch (err) {
    usage(err.message);
}
const { values: opts, positionals } = parsed;
if (!opts.url) usage('--url is required');
let url;
try {
    url = new URL(opts.url);
} catch {
    usage(`bad --url ${opts.url}`);
}
const timeoutMs = Number(opts['timeout-ms']);
if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms must be a positive integer');

const [command, ...rest] = positionals;
function jsonArg(value, what) {
    if (value === undefined) return {};
    try {
        const v = JSON.parse(value);
        if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
        return v;
    } catch (err) {
        usage(`${what} must be a JSON object (${err.message})`);
    }
}
const commands = {
    'list-tools': { arity: 0, run: c => c.listTools() },
    call: { arity: 2, run: (c, [name, args]) => c.callTool({ name, arguments: jsonArg(args, 'tool arguments') }) },
    'list-resources': { arity: 0, run: c => c.listResources() },
    read: { arity: 1, run: (c, [uri]) => c.readResource({ uri }) },
    'list-prompts': { arity: 0, run: c => c.listPrompts() },
    'get-prompt': { arity: 2, run: (c, [name, args]) => c.getPrompt({ name, arguments: jsonArg(args, 'prompt arguments') }) }
};
const chosen = commands[command];
if (!chosen) usage(command ? `unknown command ${command}` : 'no command');
if (rest.length < chosen.arity - (command === 'call' || command === 'get-prompt' ? 1 : 0) || rest.length > chosen.arity)
    usage(`wrong number of arguments for ${command}`);
if (command === 'call' || command === 'get-prompt') jsonArg(rest[1], 'arguments'); // validate before connecting

// The last non-2xx response: the SDK turns it into an error that keeps only the status.
let lastFailure;
async function recordingFetch(input, init) {
    const response = await fetch(input, init);
    if (!response.ok) {
        lastFailure = {
            http_status: response.status,
            www_authenticate: response.headers.get('www-authenticate') ?? undefined
        };
    }
    return response;
}

const transport = new StreamableHTTPClientTransport(url, {
    fetch: recordingFetch,
    requestInit: opts.token ? { headers: { Authorization: `Bearer ${opts.token}` } } : undefined
});
const client = new Client({ name: 'scopegate-interop-client', version: '1.0.0' });

function print(value) {
    process.stdout.write(JSON.stringify(value) + '\n');
}

let exitCode = 0;
try {
    await client.connect(transport, { timeout: timeoutMs });
    const result = await chosen.run(client, rest, timeoutMs);
    print({ ok: true, result });
} catch (err) {
    exitCode = 1;
    const error = { message: err instanceof Error ? err.message : String(err) };
    if (err && typeof err === 'object' && 'code' in err) error.code = err.code;
    if (lastFailure) Object.assign(error, lastFailure);
    print({ ok: false, error });
} finally {
    await client.close().catch(() => {});
}
process.exit(exitCode);
