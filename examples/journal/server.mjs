// examples/journal/server.mjs -- a small MCP server (official TypeScript SDK, Streamable HTTP)
// that scopegate's example policy protects: a journal with read, write and destructive tools.
//
// Why it exists: the gateway needs an upstream whose tools differ in risk, so that policies can
// ask for different scopes (read vs write vs delete) and the tool annotations readOnlyHint /
// destructiveHint can be checked against what the tools really do.
//
// Usage: node server.mjs [--port N] [--host 127.0.0.1] [--json]
//   (env fallbacks: JOURNAL_PORT or PORT; port 0 = ephemeral)
//   --json answers every POST with application/json instead of a text/event-stream.
// When ready, prints ONE JSON line on stdout: {"ready":true,"url":"http://127.0.0.1:PORT/mcp","port":PORT}
//
// Stateless mode (no Mcp-Session-Id; GET and DELETE get 405): the journal lives in this process,
// not in a session, so a fresh McpServer + transport per POST loses nothing; it is the SDK's
// simplest documented mode, any replica can answer any request (like scopegate itself), and it
// is where the 2026-07-28 protocol revision goes. The store is in memory, seeded with 3 entries,
// and bounded (entries, field lengths, tags, request size).
import http from 'node:http';
import { parseArgs } from 'node:util';
import * as z from 'zod';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const { values: opts } = parseArgs({
    options: {
        port: { type: 'string', default: process.env.JOURNAL_PORT ?? process.env.PORT ?? '3001' },
        host: { type: 'string', default: '127.0.0.1' },
        json: { type: 'boolean', default: false }
    }
});
if (!['127.0.0.1', '::1'].includes(opts.host)) {
    console.error(`journal: refusing to listen on non-loopback host ${opts.host}`);
    process.exit(2);
}
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error('journal: --port must be 0..65535');
    process.exit(2);
}

const LIMITS = { entries: 1000, title: 200, body: 10000, tags: 20, tag: 40, requestBytes: 1 << 20 };
const DAY = 86400 * 1000;

// ---- the store -------------------------------------------------------------------------------
const entries = new Map(); // id -> { id, title, body, tags, created, updated, trashed }
let nextId = 1;
function seed(title, body, tags, daysAgo) {
    const when = new Date(Date.now() - daysAgo * DAY).toISOString();
    const id = String(nextId++);
    entries.set(id, { id, title, body, tags, created: when, updated: when, trashed: false });
}
seed('Gateway design notes', 'Scopes per tool; step-up on 403 with the challenged scope.', ['work', 'mcp'], 1);
seed('Running log', '5 km along the river, easy pace.', ['health'], 3);
seed('Book list', 'Finish "The Mythical Man-Month".', ['reading'], 10);

const title = z.string().min(1).max(LIMITS.title);
const body = z.string().max(LIMITS.body);
const tag = z
    .string()
    .min(1)
    .max(LIMITS.tag)
    .regex(/^[A-Za-z0-9_.:-]+$/);
const tags = z.array(tag).max(LIMITS.tags);
const id = z.string().min(1).max(20).describe('Entry id, as returned by list_entries');

function text(value) {
    return { content: [{ type: 'text', text: JSON.stringify(value) }], structuredContent: value };
}
function failure(message) {
    return { content: [{ type: 'text', text: message }], isError: true };
}
function live(entryId) {
    const entry = entries.get(entryId);
    return entry && !entry.trashed ? entry : undefined;
}
function summary(entry) {
    return { id: entry.id, title: entry.title, tags: entry.tags, updated: entry.updated, trashed: entry.trashed };
}

// ---- the MCP surface -------------------------------------------------------------------------
function buildServer() {
    const server = new McpServer({ name: 'journal', version: '1.0.0' });

    server.registerTool(
        'list_entries',
        {
            title: 'List journal entries',
            description: 'Lists entries (newest first), optionally only those with a tag.',
            inputSchema: { tag: tag.optional(), include_trashed: z.boolean().optional() },
            annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false }
        },
        async ({ tag: wanted, include_trashed }) => {
            const list = [...entries.values()]
                .filter(e => include_trashed || !e.trashed)
                .filter(e => !wanted || e.tags.includes(wanted))
                .sort((a, b) => b.created.localeCompare(a.created))
                .map(summary);
            return text({ entries: list });
        }
    );

    server.registerTool(
        'get_entry',
        {
            title: 'Read one entry',
            description: 'Returns one entry with its full text.',
            inputSchema: { id },
            annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false }
        },
        async ({ id: entryId }) => {
            const entry = live(entryId);
            return entry ? text(entry) : failure(`no entry ${entryId}`);
        }
    );

    server.registerTool(
        'create_entry',
        {
            title: 'Create an entry',
            description: 'Adds a new entry; never changes existing ones.',
            inputSchema: { title, body, tags: tags.optional() },
            annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false }
        },
        async args => {
            if (entries.size >= LIMITS.entries) return failure('journal is full');
            const now = new Date().toISOString();
            const entryId = String(nextId++);
            const entry = { id: entryId, title: args.title, body: args.body, tags: [...new Set(args.tags ?? [])] };
            Object.assign(entry, { created: now, updated: now, trashed: false });
            entries.set(entryId, entry);
            return text(entry);
        }
    );

    server.registerTool(
        'update_entry',
        {
            title: 'Rewrite an entry',
            description: 'Replaces the title and/or body of an entry; the old text is lost.',
            inputSchema: { id, title: title.optional(), body: body.optional() },
            // Overwriting text loses the old version: destructive, though repeating it changes nothing more.
            annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false }
        },
        async ({ id: entryId, title: newTitle, body: newBody }) => {
            const entry = live(entryId);
            if (!entry) return failure(`no entry ${entryId}`);
            if (newTitle === undefined && newBody === undefined) return failure('nothing to update');
            if (newTitle !== undefined) entry.title = newTitle;
            if (newBody !== undefined) entry.body = newBody;
            entry.updated = new Date().toISOString();
            return text(entry);
        }
    );

    server.registerTool(
        'tag_entry',
        {
            title: 'Add tags to an entry',
            description: 'Adds tags to an entry; existing tags are kept.',
            inputSchema: { id, tags: tags.min(1) },
            annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false }
        },
        async ({ id: entryId, tags: added }) => {
            const entry = live(entryId);
            if (!entry) return failure(`no entry ${entryId}`);
            const merged = [...new Set([...entry.tags, ...added])];
            if (merged.length > LIMITS.tags) return failure(`at most ${LIMITS.tags} tags`);
            entry.tags = merged;
            entry.updated = new Date().toISOString();
            return text(entry);
        }
    );

    server.registerTool(
        'delete_entry',
        {
            title: 'Delete an entry',
            description:
                'Moves an entry to the trash, or with permanent=true erases it (and any trashed copy) for good.',
            inputSchema: {
                id,
                permanent: z.boolean().default(false).describe('true erases the entry; false moves it to the trash')
            },
            annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false }
        },
        async ({ id: entryId, permanent }) => {
            const entry = entries.get(entryId);
            if (!entry || (entry.trashed && !permanent)) return failure(`no entry ${entryId}`);
            if (permanent) entries.delete(entryId);
            else entry.trashed = true;
            return text({ id: entryId, deleted: permanent ? 'permanently' : 'trashed' });
        }
    );

    server.registerTool(
        'ping',
        {
            title: 'Ping',
            description: 'Answers pong; touches nothing.',
            inputSchema: {},
            annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false }
        },
        async () => ({ content: [{ type: 'text', text: 'pong' }] })
    );

    server.registerResource(
        'entry',
        new ResourceTemplate('journal://entries/{id}', {
            list: async () => ({
                resources: [...entries.values()]
                    .filter(e => !e.trashed)
                    .map(e => ({ uri: `journal://entries/${e.id}`, name: e.title, mimeType: 'application/json' }))
            })
        }),
        { title: 'Journal entry', description: 'One entry as JSON', mimeType: 'application/json' },
        async (uri, { id: entryId }) => {
            const entry = typeof entryId === 'string' ? live(entryId) : undefined;
            if (!entry) throw new Error(`no entry ${entryId}`);
            return { contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(entry) }] };
        }
    );

    server.registerPrompt(
        'summarize_week',
        {
            title: 'Summarize a week',
            description: 'Asks the model to summarize the entries of the 7 days starting at week_start.',
            argsSchema: {
                week_start: z
                    .string()
                    .regex(/^\d{4}-\d{2}-\d{2}$/)
                    .optional()
                    .describe('YYYY-MM-DD; default: 7 days ago')
            }
        },
        async ({ week_start }) => {
            const start = week_start ? Date.parse(`${week_start}T00:00:00Z`) : Date.now() - 7 * DAY;
            const end = start + 7 * DAY;
            const week = [...entries.values()].filter(e => {
                const t = Date.parse(e.created);
                return !e.trashed && t >= start && t < end;
            });
            const lines = week.map(e => `- ${e.created.slice(0, 10)} ${e.title}: ${e.body}`).join('\n');
            const from = new Date(start).toISOString().slice(0, 10);
            return {
                messages: [
                    {
                        role: 'user',
                        content: {
                            type: 'text',
                            text: `Summarize my journal for the week starting ${from} in three sentences.\n${lines || '(no entries)'}`
                        }
                    }
                ]
            };
        }
    );
    return server;
}

// ---- HTTP ------------------------------------------------------------------------------------
function jsonRpcError(res, status, code, message) {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        req.on('data', chunk => {
            size += chunk.length;
            if (size > LIMITS.requestBytes) {
                reject(new Error('too large'));
                req.destroy();
                return;
            }
            chunks.push(chunk);
        });
        req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        req.on('error', reject);
    });
}

const httpServer = http.createServer(async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path !== '/mcp') return jsonRpcError(res, 404, -32601, 'not found: the MCP endpoint is /mcp');
    if (req.method !== 'POST') {
        res.setHeader('Allow', 'POST');
        return jsonRpcError(res, 405, -32000, 'Method not allowed (stateless server: POST only).');
    }
    let parsed;
    try {
        parsed = JSON.parse(await readBody(req));
    } catch (err) {
        const tooLarge = err instanceof Error && err.message === 'too large';
        return jsonRpcError(res, tooLarge ? 413 : 400, -32700, tooLarge ? 'request too large' : 'Parse error');
    }
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: undefined,
        enableJsonResponse: opts.json
    });
    res.on('close', () => {
        transport.close();
        server.close();
    });
    try {
        await server.connect(transport);
        await transport.handleRequest(req, res, parsed);
    } catch (err) {
        console.error('journal: error handling request:', err);
        if (!res.headersSent) jsonRpcError(res, 500, -32603, 'Internal server error');
    }
});

httpServer.listen(port, opts.host, () => {
    const addr = httpServer.address();
    const hostInUrl = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    console.log(JSON.stringify({ ready: true, url: `http://${hostInUrl}:${addr.port}/mcp`, port: addr.port }));
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => httpServer.close(() => process.exit(0)));
