// tests/peers/upstream_everything.mjs -- runs @modelcontextprotocol/server-everything in
// streamableHttp mode on a loopback port, as an upstream for scopegate.
//
// Why a wrapper instead of `npx mcp-server-everything streamableHttp`: that entry point reads
// PORT from the environment, calls app.listen(PORT) on every interface, and prints chatter on
// stdout with no machine-readable "ready" signal. Here the listen call is pinned to loopback,
// an ephemeral port (0) is allowed, its chatter goes to stderr, and stdout gets one JSON line:
//   {"ready":true,"url":"http://127.0.0.1:PORT/mcp","port":PORT}
//
// Usage: node upstream_everything.mjs [--port N] [--host 127.0.0.1]   (env fallback: PORT)
// The server is session-based (Mcp-Session-Id), answers with SSE, and supports GET/DELETE.
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import path from 'node:path';

const { values: opts } = parseArgs({
    options: {
        port: { type: 'string', default: process.env.PORT ?? '0' },
        host: { type: 'string', default: '127.0.0.1' }
    }
});
if (!['127.0.0.1', '::1'].includes(opts.host)) {
    console.error(`upstream_everything: refusing to listen on non-loopback host ${opts.host}`);
    process.exit(2);
}
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error('upstream_everything: --port must be 0..65535');
    process.exit(2);
}

// Keep stdout for the ready line alone.
console.log = console.error;
const writeStdout = process.stdout.write.bind(process.stdout);

// express's app.listen(port) ends in net.Server#listen(port, cb): add the host there.
const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
    if (typeof args[0] === 'number' || typeof args[0] === 'string') {
        const cb = typeof args[args.length - 1] === 'function' ? args[args.length - 1] : undefined;
        this.once('listening', () => {
            const addr = this.address();
            const hostInUrl = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
            const url = `http://${hostInUrl}:${addr.port}/mcp`;
            writeStdout(JSON.stringify({ ready: true, url, port: addr.port }) + '\n');
        });
        net.Server.prototype.listen = originalListen; // only the first server is ours
        return originalListen.call(this, { port: Number(args[0]), host: opts.host }, cb);
    }
    return originalListen.apply(this, args);
};

process.env.PORT = String(port);
const require = createRequire(import.meta.url);
const pkgDir = path.dirname(require.resolve('@modelcontextprotocol/server-everything/package.json'));
await import(path.join(pkgDir, 'dist', 'transports', 'streamableHttp.js'));
