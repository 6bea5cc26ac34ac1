// tests/peers/slow_clients.mjs -- a slowloris: many connections that each trickle a request head.
//
// Why it exists: tests/interop/slowclients.test.mjs needs an attacker in a process of its own (so
// that its thousand timers do not disturb the honest client's latency measurement). Each
// connection sends the start of a POST head, then one more header byte every --interval-ms
// (random phase), never finishing it; a connection the server closes is opened again after
// --reconnect-ms, as a real attacker would.
//
// Usage: node slow_clients.mjs --port P [--connections 1000] [--interval-ms 1000] [--reconnect-ms 100]
// Prints one JSON line once every connection is open ({"ready":true,"open":N}), then a JSON line
// of counters every 500 ms: open, opened, closed, and statuses (status code -> count, from the
// answers the server sent before closing).
import net from 'node:net';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? Number(args[i + 1]) : dflt;
};
const port = opt('port', 0);
const connections = opt('connections', 1000);
const intervalMs = opt('interval-ms', 1000);
const reconnectMs = opt('reconnect-ms', 100);

const stats = { open: 0, opened: 0, closed: 0, statuses: {} };
let ready = false;

function attacker() {
    const sock = net.connect({ host: '127.0.0.1', port });
    let timer = null;
    let connected = false;
    let answer = '';
    sock.setNoDelay(true);
    sock.on('connect', () => {
        connected = true;
        stats.open++;
        stats.opened++;
        sock.write(`POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `);
        const tick = () => {
            sock.write('a');
            timer = setTimeout(tick, intervalMs);
        };
        timer = setTimeout(tick, Math.random() * intervalMs);
        if (!ready && stats.open >= connections) {
            ready = true;
            process.stdout.write(JSON.stringify({ ready: true, open: stats.open }) + '\n');
        }
    });
    sock.on('data', d => {
        answer += d.toString('latin1');
    });
    sock.on('error', () => {});
    sock.on('close', () => {
        clearTimeout(timer);
        const m = /^HTTP\/1\.1 (\d{3})/.exec(answer);
        if (m) stats.statuses[m[1]] = (stats.statuses[m[1]] ?? 0) + 1;
        if (connected) {
            stats.open--;
            stats.closed++;
        }
        setTimeout(attacker, reconnectMs);
    });
}

for (let i = 0; i < connections; i++) attacker();
setInterval(() => process.stdout.write(JSON.stringify(stats) + '\n'), 500);
process.on('SIGTERM', () => process.exit(0));
