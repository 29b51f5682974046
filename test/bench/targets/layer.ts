// The HTTP layer alone, for test/bench/http-layer.ts: how much CPU a request costs in Node's
// http server and in undici's client, against the least any JavaScript HTTP/1.1 code on a
// socket could spend (find the end of a message, write a fixed one). Nothing here parses
// correctly; it is a lower bound, never a server or client to use.
//
//   node layer.ts server-http            Node's http server, one fixed answer; prints READY <port>
//   node layer.ts server-net             a net server writing that answer for each request head
//   node layer.ts client-undici PORT S   32 requests in flight through an undici Pool's dispatch() for S seconds
//   node layer.ts client-net PORT S      the same over 32 raw sockets
// Clients print BENCH_JSON {"requests", "cpuSeconds"}: their own CPU (process.cpuUsage).

import { createServer } from 'node:http';
import { createServer as createNetServer, connect, type AddressInfo, type Server } from 'node:net';
import { Pool, type Dispatcher } from 'undici';

const BODY = JSON.stringify({ ok: true, method: 'GET', url: '/items/123', bodyBytes: 0, item: { id: 42, name: 'widget', quantity: 3 } });
const IN_FLIGHT = 32;

function ready(server: Server): void {
  server.listen(0, '127.0.0.1', () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
  process.on('SIGTERM', () => process.exit(0));
}

function serverHttp(): void {
  ready(createServer({ keepAliveTimeout: 30_000 }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY), 'cache-control': 'no-store' });
    res.end(BODY);
  }));
}

function serverNet(): void {
  const answer = Buffer.from(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(BODY)}\r\ncache-control: no-store\r\ndate: ${new Date().toUTCString()}\r\nconnection: keep-alive\r\n\r\n${BODY}`);
  ready(createNetServer((socket) => {
    let pending = '';
    socket.on('data', (chunk) => {
      pending += chunk.toString('latin1');
      let answers = 0;
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) { pending = pending.slice(end + 4); answers++; }
      if (answers === 1) socket.write(answer);
      else if (answers > 1) socket.write(Buffer.concat(Array(answers).fill(answer)));
    });
    socket.on('error', () => socket.destroy());
  }));
}

// Through dispatch() with a handler that only counts, as driftguard's forwarder (forward.ts)
// uses undici: no Readable body or promise per request.
async function clientUndici(port: number, seconds: number): Promise<void> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: IN_FLIGHT });
  const until = Date.now() + seconds * 1000;
  let requests = 0;
  const start = process.cpuUsage();
  await Promise.all(Array.from({ length: IN_FLIGHT }, () => new Promise<void>((resolve, reject) => {
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart() {},
      onResponseStart() {},
      onResponseData() {},
      onResponseEnd() {
        requests++;
        if (Date.now() < until) queueMicrotask(send); else resolve();
      },
      onResponseError(_controller, err) { reject(err); },
    };
    const send = () => pool.dispatch({ path: '/items/123', method: 'GET', headers: { accept: 'application/json' } }, handler);
    send();
  })));
  report(requests, start);
  await pool.close();
}

async function clientNet(port: number, seconds: number): Promise<void> {
  const request = Buffer.from(`GET /items/123 HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\naccept: application/json\r\n\r\n`);
  const until = Date.now() + seconds * 1000;
  let requests = 0;
  const start = process.cpuUsage();
  await Promise.all(Array.from({ length: IN_FLIGHT }, () => new Promise<void>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let pending = '';
    socket.on('data', (chunk) => {
      pending += chunk.toString('latin1');
      // One response at a time on this socket: its head, then content-length bytes.
      const end = pending.indexOf('\r\n\r\n');
      if (end === -1) return;
      const length = Number(/content-length: (\d+)/i.exec(pending.slice(0, end))?.[1]);
      if (pending.length < end + 4 + length) return;
      pending = pending.slice(end + 4 + length);
      requests++;
      if (Date.now() < until) socket.write(request); else { socket.end(); resolve(); }
    });
    socket.on('error', reject);
    socket.write(request);
  })));
  report(requests, start);
}

function report(requests: number, start: NodeJS.CpuUsage): void {
  const used = process.cpuUsage(start);
  process.stdout.write(`BENCH_JSON ${JSON.stringify({ requests, cpuSeconds: (used.user + used.system) / 1e6 })}\n`);
}

const [mode, port, seconds] = process.argv.slice(2);
if (mode === 'server-http') serverHttp();
else if (mode === 'server-net') serverNet();
else if (mode === 'client-undici') await clientUndici(Number(port), Number(seconds));
else if (mode === 'client-net') await clientNet(Number(port), Number(seconds));
else { process.stderr.write(`layer.ts: unknown mode ${mode}\n`); process.exit(2); }
