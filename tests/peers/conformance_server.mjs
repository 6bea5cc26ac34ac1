// tests/peers/conformance_server.mjs -- an MCP server that implements every fixture the active
// server scenarios of @modelcontextprotocol/conformance (0.1.16) call, so that the suite can
// pass completely (30 of 30) and "passes directly, fails through scopegate" means something.
//
// Why our own: the package ships only the scenarios, not the reference server they were written
// against, and server-everything lacks most fixtures (it passes 11 of 30). Each fixture below
// follows the "Server Implementation Requirements" text of its scenario (`conformance list`
// prints the names; the requirements are each scenario's description).
//
// Usage: node conformance_server.mjs [--port 0] [--host 127.0.0.1]
//   stdout: one line {"ready":true,"url":"http://127.0.0.1:PORT/mcp","port":PORT}; logs on stderr.
//
// Transport: Streamable HTTP (MCP 2025-11-25, basic/transports) with sessions (Mcp-Session-Id),
// SSE answers, the standalone GET stream and DELETE. Sessions are needed for the server-to-client
// requests: a tool that asks for sampling or elicitation sends `sampling/createMessage` /
// `elicitation/create` on the SSE stream of the POST that called it, and the client's answer
// arrives as a separate POST that must reach the same session. Requests whose Host is not a
// loopback name are refused with 403 (DNS rebinding protection, as the transport spec says).
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
    CallToolRequestSchema, CompleteRequestSchema, CreateMessageResultSchema, ElicitResultSchema, ErrorCode,
    GetPromptRequestSchema, ListPromptsRequestSchema, ListResourcesRequestSchema,
    ListResourceTemplatesRequestSchema, ListToolsRequestSchema, McpError, ReadResourceRequestSchema,
    SubscribeRequestSchema, UnsubscribeRequestSchema
} from '@modelcontextprotocol/sdk/types.js';

const { values: opts } = parseArgs({
    options: {
        port: { type: 'string', default: process.env.PORT ?? '0' },
        host: { type: 'string', default: '127.0.0.1' }
    }
});
if (!['127.0.0.1', '::1'].includes(opts.host)) {
    console.error(`conformance_server: refusing to listen on non-loopback host ${opts.host}`);
    process.exit(2);
}
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error('conformance_server: --port must be 0..65535');
    process.exit(2);
}

const MAX_SESSIONS = 200;        // oldest is closed beyond this: a test fixture, not a service
const MAX_BODY_BYTES = 1 << 20;
const MAX_EVENTS = 1000;         // per session, for resumption (oldest dropped)
const RETRY_MS = 500;            // the SSE `retry` the priming events announce
// How long a tool waits for the client's answer to sampling/elicitation. Short, so that a
// gateway that loses the answer fails the scenario in seconds, not after the SDK's 60 s.
const CLIENT_REQUEST_TIMEOUT_MS = 10000;

// A 1x1 PNG and a tiny WAV (8 kHz, 8-bit mono, 8 samples of silence), base64.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV = (() => {
    const samples = Buffer.alloc(8, 0x80);
    const h = Buffer.alloc(44);
    h.write('RIFF', 0); h.writeUInt32LE(36 + samples.length, 4); h.write('WAVE', 8);
    h.write('fmt ', 12); h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22);
    h.writeUInt32LE(8000, 24); h.writeUInt32LE(8000, 28); h.writeUInt16LE(1, 32); h.writeUInt16LE(8, 34);
    h.write('data', 36); h.writeUInt32LE(samples.length, 40);
    return Buffer.concat([h, samples]).toString('base64');
})();

const noArgs = { type: 'object', properties: {} };
const text = t => ({ type: 'text', text: t });
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// --- tools --------------------------------------------------------------------------------------

const tools = [
    { name: 'test_simple_text', description: 'Returns simple text', inputSchema: noArgs },
    { name: 'test_image_content', description: 'Returns a PNG image', inputSchema: noArgs },
    { name: 'test_audio_content', description: 'Returns a WAV clip', inputSchema: noArgs },
    { name: 'test_embedded_resource', description: 'Returns an embedded text resource', inputSchema: noArgs },
    { name: 'test_multiple_content_types', description: 'Returns text, image and resource content', inputSchema: noArgs },
    { name: 'test_tool_with_logging', description: 'Sends three info log notifications while it runs', inputSchema: noArgs },
    { name: 'test_tool_with_progress', description: 'Reports progress 0, 50, 100 of 100', inputSchema: noArgs },
    { name: 'test_error_handling', description: 'Always fails (isError: true)', inputSchema: noArgs },
    {
        name: 'test_sampling', description: 'Asks the client to sample an LLM (sampling/createMessage)',
        inputSchema: { type: 'object', properties: { prompt: { type: 'string', description: 'The prompt to send' } }, required: ['prompt'] }
    },
    {
        name: 'test_elicitation', description: 'Asks the client for user input (elicitation/create)',
        inputSchema: { type: 'object', properties: { message: { type: 'string', description: 'The message to show' } }, required: ['message'] }
    },
    { name: 'test_elicitation_sep1034_defaults', description: 'Elicitation whose schema has defaults for every primitive type', inputSchema: noArgs },
    { name: 'test_elicitation_sep1330_enums', description: 'Elicitation with all five enum schema variants', inputSchema: noArgs },
    // For the pending scenarios (`--suite all`): server-sse-polling and json-schema-2020-12.
    { name: 'test_reconnection', description: 'Closes its SSE stream mid-call; the result comes after the client resumes', inputSchema: noArgs },
    {
        name: 'json_schema_2020_12_tool', description: 'Tool with JSON Schema 2020-12 features',
        inputSchema: {
            $schema: 'https://json-schema.org/draft/2020-12/schema',
            type: 'object',
            $defs: { address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
            properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
            additionalProperties: false
        }
    }
];

const sep1034Schema = {
    type: 'object',
    properties: {
        name: { type: 'string', description: 'User name', default: 'John Doe' },
        age: { type: 'integer', description: 'User age', default: 30 },
        score: { type: 'number', description: 'User score', default: 95.5 },
        status: { type: 'string', description: 'User status', enum: ['active', 'inactive', 'pending'], default: 'active' },
        verified: { type: 'boolean', description: 'Verification status', default: true }
    }
};

const sep1330Schema = {
    type: 'object',
    properties: {
        untitledSingle: { type: 'string', description: 'Untitled single-select', enum: ['option1', 'option2', 'option3'] },
        titledSingle: {
            type: 'string', description: 'Titled single-select',
            oneOf: [{ const: 'value1', title: 'First Option' }, { const: 'value2', title: 'Second Option' }, { const: 'value3', title: 'Third Option' }]
        },
        legacyEnum: {
            type: 'string', description: 'Legacy titled enum',
            enum: ['opt1', 'opt2', 'opt3'], enumNames: ['Option One', 'Option Two', 'Option Three']
        },
        untitledMulti: {
            type: 'array', description: 'Untitled multi-select',
            items: { type: 'string', enum: ['option1', 'option2', 'option3'] }
        },
        titledMulti: {
            type: 'array', description: 'Titled multi-select',
            items: { anyOf: [{ const: 'value1', title: 'First Choice' }, { const: 'value2', title: 'Second Choice' }, { const: 'value3', title: 'Third Choice' }] }
        }
    }
};

async function callTool(server, request, extra) {
    const args = request.params.arguments ?? {};
    // Server-to-client messages go out as related to this request: on its SSE stream.
    const log = async (level, data) => {
        if (!server.isMessageIgnored(level, extra.sessionId)) {
            await extra.sendNotification({ method: 'notifications/message', params: { level, logger: 'conformance', data } });
        }
    };
    const elicited = async (message, requestedSchema) => {
        const r = await extra.sendRequest({ method: 'elicitation/create', params: { message, requestedSchema } }, ElicitResultSchema,
            { timeout: CLIENT_REQUEST_TIMEOUT_MS });
        return `Elicitation completed: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`;
    };
    switch (request.params.name) {
        case 'test_simple_text':
            return { content: [text('This is a simple text response for testing.')] };
        case 'test_image_content':
            return { content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] };
        case 'test_audio_content':
            return { content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] };
        case 'test_embedded_resource':
            return {
                content: [{
                    type: 'resource',
                    resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' }
                }]
            };
        case 'test_multiple_content_types':
            return {
                content: [
                    text('Multiple content types test:'),
                    { type: 'image', data: PNG, mimeType: 'image/png' },
                    {
                        type: 'resource',
                        resource: { uri: 'test://mixed-content-resource', mimeType: 'application/json', text: '{"test":"data","value":123}' }
                    }
                ]
            };
        case 'test_tool_with_logging':
            await log('info', 'Tool execution started');
            await sleep(50);
            await log('info', 'Tool processing data');
            await sleep(50);
            await log('info', 'Tool execution completed');
            return { content: [text('Tool with logging executed successfully')] };
        case 'test_tool_with_progress': {
            const progressToken = request.params._meta?.progressToken;
            for (const progress of [0, 50, 100]) {
                if (progress) await sleep(50);
                if (progressToken !== undefined) {
                    await extra.sendNotification({ method: 'notifications/progress', params: { progressToken, progress, total: 100 } });
                }
            }
            return { content: [text(`Tool with progress executed successfully (token ${JSON.stringify(progressToken ?? null)})`)] };
        }
        case 'test_error_handling':
            return { isError: true, content: [text('This tool intentionally returns an error for testing')] };
        case 'test_sampling': {
            if (!server.getClientCapabilities()?.sampling) throw new McpError(ErrorCode.InvalidRequest, 'client does not support sampling');
            if (typeof args.prompt !== 'string') throw new McpError(ErrorCode.InvalidParams, 'prompt must be a string');
            const r = await extra.sendRequest({
                method: 'sampling/createMessage',
                params: { messages: [{ role: 'user', content: text(args.prompt) }], maxTokens: 100 }
            }, CreateMessageResultSchema, { timeout: CLIENT_REQUEST_TIMEOUT_MS });
            return { content: [text(`LLM response: ${r.content?.type === 'text' ? r.content.text : JSON.stringify(r.content)}`)] };
        }
        case 'test_elicitation': {
            if (!server.getClientCapabilities()?.elicitation) throw new McpError(ErrorCode.InvalidRequest, 'client does not support elicitation');
            if (typeof args.message !== 'string') throw new McpError(ErrorCode.InvalidParams, 'message must be a string');
            const r = await extra.sendRequest({
                method: 'elicitation/create',
                params: {
                    message: args.message,
                    requestedSchema: {
                        type: 'object',
                        properties: {
                            username: { type: 'string', description: "User's response" },
                            email: { type: 'string', description: "User's email address" }
                        },
                        required: ['username', 'email']
                    }
                }
            }, ElicitResultSchema, { timeout: CLIENT_REQUEST_TIMEOUT_MS });
            return { content: [text(`User response: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`)] };
        }
        case 'test_elicitation_sep1034_defaults':
            return { content: [text(await elicited('Please review and update the form fields with defaults', sep1034Schema))] };
        case 'test_elicitation_sep1330_enums':
            return { content: [text(await elicited('Please select options from the enum fields', sep1330Schema))] };
        case 'test_reconnection':
            // SSE polling (MCP 2025-11-25 basic/transports, "Resumability and Redelivery"): the
            // server may close the stream after the priming event; the client reconnects with
            // GET + Last-Event-ID after `retry` ms and gets the rest (this result) from the store.
            extra.closeSSEStream?.();
            await sleep(100);
            return { content: [text('Reconnection test completed successfully')] };
        case 'json_schema_2020_12_tool':
            return { content: [text(`Received: ${JSON.stringify(args)}`)] };
        default:
            throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    }
}

// --- resources ----------------------------------------------------------------------------------

const resources = [
    { uri: 'test://static-text', name: 'static-text', description: 'A static text resource', mimeType: 'text/plain' },
    { uri: 'test://static-binary', name: 'static-binary', description: 'A static binary resource (PNG)', mimeType: 'image/png' },
    { uri: 'test://watched-resource', name: 'watched-resource', description: 'A resource that can be subscribed to', mimeType: 'text/plain' }
];
const templates = [{
    uriTemplate: 'test://template/{id}/data', name: 'template-data',
    description: 'Data for an id (parameter substitution)', mimeType: 'application/json'
}];

function readResource(uri) {
    if (uri === 'test://static-text') return { uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' };
    if (uri === 'test://static-binary') return { uri, mimeType: 'image/png', blob: PNG };
    if (uri === 'test://watched-resource') return { uri, mimeType: 'text/plain', text: 'Watched resource content.' };
    const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (m) {
        const id = decodeURIComponent(m[1]);
        return { uri, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) };
    }
    throw new McpError(-32002, `Resource not found: ${uri}`);
}

// --- prompts ------------------------------------------------------------------------------------

const prompts = [
    { name: 'test_simple_prompt', description: 'A prompt without arguments' },
    {
        name: 'test_prompt_with_arguments', description: 'A prompt with two required arguments',
        arguments: [
            { name: 'arg1', description: 'First test argument', required: true },
            { name: 'arg2', description: 'Second test argument', required: true }
        ]
    },
    {
        name: 'test_prompt_with_embedded_resource', description: 'A prompt that embeds a resource',
        arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }]
    },
    { name: 'test_prompt_with_image', description: 'A prompt with image content' }
];

function getPrompt({ name, arguments: args = {} }) {
    const user = content => ({ role: 'user', content });
    const need = key => {
        if (typeof args[key] !== 'string') throw new McpError(ErrorCode.InvalidParams, `argument ${key} is required`);
        return args[key];
    };
    switch (name) {
        case 'test_simple_prompt':
            return { messages: [user(text('This is a simple prompt for testing.'))] };
        case 'test_prompt_with_arguments':
            return { messages: [user(text(`Prompt with arguments: arg1='${need('arg1')}', arg2='${need('arg2')}'`))] };
        case 'test_prompt_with_embedded_resource':
            return {
                messages: [
                    user({ type: 'resource', resource: { uri: need('resourceUri'), mimeType: 'text/plain', text: 'Embedded resource content for testing.' } }),
                    user(text('Please process the embedded resource above.'))
                ]
            };
        case 'test_prompt_with_image':
            return { messages: [user({ type: 'image', data: PNG, mimeType: 'image/png' }), user(text('Please analyze the image above.'))] };
        default:
            throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${name}`);
    }
}

// Completions for the prompt arguments and the template's {id}: fixed lists filtered by prefix.
const completionValues = {
    'ref/prompt test_prompt_with_arguments arg1': ['paris', 'park', 'party', 'test1', 'test2'],
    'ref/prompt test_prompt_with_arguments arg2': ['alpha', 'beta', 'gamma'],
    'ref/resource test://template/{id}/data id': ['1', '2', '3', '123']
};

// --- one Server per session ---------------------------------------------------------------------

function newServer() {
    const server = new Server(
        { name: 'scopegate-conformance-fixture', version: '1.0.0' },
        { capabilities: { tools: {}, resources: { subscribe: true, listChanged: false }, prompts: {}, logging: {}, completions: {} } }
    );
    const subscriptions = new Set();
    server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools }));
    server.setRequestHandler(CallToolRequestSchema, (request, extra) => callTool(server, request, extra));
    server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources }));
    server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: templates }));
    server.setRequestHandler(ReadResourceRequestSchema, async request => ({ contents: [readResource(request.params.uri)] }));
    server.setRequestHandler(SubscribeRequestSchema, async request => {
        subscriptions.add(request.params.uri);
        return {};
    });
    server.setRequestHandler(UnsubscribeRequestSchema, async request => {
        subscriptions.delete(request.params.uri);
        return {};
    });
    server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts }));
    server.setRequestHandler(GetPromptRequestSchema, async request => getPrompt(request.params));
    server.setRequestHandler(CompleteRequestSchema, async request => {
        const { ref, argument } = request.params;
        const key = `${ref.type} ${ref.type === 'ref/prompt' ? ref.name : ref.uri} ${argument.name}`;
        const values = (completionValues[key] ?? []).filter(v => v.startsWith(argument.value));
        return { completion: { values, total: values.length, hasMore: false } };
    });
    return server;
}

// Resumability (the SDK's EventStore interface): every SSE event a session sends gets an id
// `<stream id>_<sequence>`; a GET with Last-Event-ID replays the later events of that stream.
// With an event store the transport also starts each SSE answer with a priming event (an id and
// empty data), as server-everything does: a shape list filtering must pass through.
function newEventStore() {
    const events = new Map(); // event id -> { streamId, message }, in insertion order
    let seq = 0;
    return {
        async storeEvent(streamId, message) {
            const id = `${streamId}_${++seq}`;
            events.set(id, { streamId, message });
            if (events.size > MAX_EVENTS) events.delete(events.keys().next().value);
            return id;
        },
        async getStreamIdForEventId(eventId) {
            return events.get(eventId)?.streamId;
        },
        async replayEventsAfter(lastEventId, { send }) {
            const last = events.get(lastEventId);
            if (!last) throw new Error(`unknown event id ${lastEventId}`);
            let after = false;
            for (const [id, { streamId, message }] of events) {
                if (id === lastEventId) after = true;
                else if (after && streamId === last.streamId) await send(id, message);
            }
            return last.streamId;
        }
    };
}

const sessions = new Map(); // session id -> { transport, server }

async function closeSession(id) {
    const s = sessions.get(id);
    if (!s) return;
    sessions.delete(id);
    await s.transport.close().catch(() => {});
    await s.server.close().catch(() => {});
}

// --- HTTP ---------------------------------------------------------------------------------------

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

function hostIsLoopback(req) {
    const host = req.headers.host;
    if (!host) return false;
    let hostname;
    try {
        hostname = new URL(`http://${host}`).hostname;
    } catch {
        return false;
    }
    return LOOPBACK_HOSTS.has(hostname);
}

function originIsLoopback(req) {
    const origin = req.headers.origin;
    if (origin === undefined) return true;
    try {
        return LOOPBACK_HOSTS.has(new URL(origin).hostname);
    } catch {
        return false;
    }
}

function jsonError(res, status, code, message) {
    if (res.headersSent) return res.end();
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        req.on('data', c => {
            size += c.length;
            if (size > MAX_BODY_BYTES) {
                reject(Object.assign(new Error('body too large'), { status: 413 }));
                req.destroy();
                return;
            }
            chunks.push(c);
        });
        req.on('end', () => {
            try {
                resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
            } catch {
                reject(Object.assign(new Error('Parse error'), { status: 400, code: ErrorCode.ParseError }));
            }
        });
        req.on('error', reject);
    });
}

const isInitialize = body => (Array.isArray(body) ? body : [body]).some(m => m?.method === 'initialize');

async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname !== '/mcp') return jsonError(res, 404, -32000, 'Not found');
    // DNS rebinding protection (MCP basic/transports, "Security Warning"): refuse foreign Host/Origin.
    if (!hostIsLoopback(req) || !originIsLoopback(req)) return jsonError(res, 403, -32000, 'Forbidden: Host or Origin is not loopback');
    const sessionId = req.headers['mcp-session-id'];
    if (req.method === 'POST') {
        let body;
        try {
            body = await readBody(req);
        } catch (err) {
            return jsonError(res, err.status ?? 400, err.code ?? -32000, err.message);
        }
        if (sessionId === undefined && isInitialize(body)) {
            while (sessions.size >= MAX_SESSIONS) await closeSession(sessions.keys().next().value);
            const server = newServer();
            const transport = new StreamableHTTPServerTransport({
                sessionIdGenerator: () => randomUUID(),
                eventStore: newEventStore(),
                retryInterval: RETRY_MS,
                onsessioninitialized: id => sessions.set(id, { transport, server })
            });
            transport.onclose = () => {
                if (transport.sessionId) sessions.delete(transport.sessionId);
            };
            await server.connect(transport);
            return transport.handleRequest(req, res, body);
        }
        const s = sessionId !== undefined && sessions.get(sessionId);
        if (!s) return jsonError(res, sessionId === undefined ? 400 : 404, -32000, 'Bad Request: no valid session');
        return s.transport.handleRequest(req, res, body);
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
        const s = sessionId !== undefined && sessions.get(sessionId);
        if (!s) return jsonError(res, sessionId === undefined ? 400 : 404, -32000, 'Bad Request: no valid session');
        return s.transport.handleRequest(req, res);
    }
    res.setHeader('Allow', 'GET, POST, DELETE');
    return jsonError(res, 405, -32000, 'Method not allowed');
}

const httpServer = http.createServer((req, res) => {
    handle(req, res).catch(err => {
        console.error(`conformance_server: ${req.method} ${req.url}: ${err?.stack ?? err}`);
        jsonError(res, 500, ErrorCode.InternalError, 'Internal error');
    });
});

httpServer.listen({ port, host: opts.host }, () => {
    const addr = httpServer.address();
    const hostInUrl = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    process.stdout.write(JSON.stringify({ ready: true, url: `http://${hostInUrl}:${addr.port}/mcp`, port: addr.port }) + '\n');
    console.error(`conformance_server: listening on ${hostInUrl}:${addr.port}`);
});

async function shutdown() {
    await Promise.all([...sessions.keys()].map(closeSession));
    httpServer.close(() => process.exit(0));
    httpServer.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
