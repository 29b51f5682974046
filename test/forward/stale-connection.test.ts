// An upstream that closes an idle keep-alive connection just as driftguard reuses it (a race
// with the upstream's idle timeout: gunicorn closes after 2 s, driftguard kept connections
// 4 s). Here a real upstream on loopback that answers the first request of each connection
// and closes the connection when a second one arrives on it, as the race looks from the
// upstream's side: deterministic, where the timing race is not. A GET, HEAD or OPTIONS
// without a body is sent once more on a new connection; a write is not (its 502 stays).

import t from 'tap';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { world } from '../core/world.ts';
import { testKey, jwks } from '../support/keys.ts';
import { jwksServer } from '../support/servers.ts';
import { baseRules } from '../support/driftguard.ts';
import { collector, startWithTelemetry, traceparent, randomHex, KIND } from '../telemetry/support.ts';

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}
const close = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));

/** The upstream: how it ends a reused connection, and what it answered. */
async function closingUpstream(how: 'end' | 'destroy') {
  const answered: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let served = false;
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      if (served) { if (how === 'end') socket.end(); else socket.destroy(); return; }
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      served = true;
      answered.push(head.slice(0, head.indexOf('\r\n')));
      socket.write(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n${head.startsWith('HEAD') ? '' : 'ok'}`);
    });
  });
  const port = await listen(server);
  return { answered, origin: `http://127.0.0.1:${port}`, close: async () => { for (const s of sockets) s.destroy(); await close(server); } };
}

for (const how of ['end', 'destroy'] as const) {
  t.test(`a reused connection the upstream closes (${how === 'end' ? 'FIN' : 'reset'}): a GET is sent again, a POST gets its 502`, async (t) => {
    const up = await closingUpstream(how);
    t.teardown(() => up.close());
    // One connection at a time: each request after the first goes on the connection before it.
    const w = await world(t, (r) => { r.proxy.upstream = up.origin; r.proxy.connections = 1; });
    const tok = await w.tok();
    t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'the first request opens a connection, kept alive');
    const again = await w.call('GET', '/items/2', { token: tok });
    t.equal(again.status, 200, 'sent again on a new connection (before: 502 upstream-unavailable for a request the app never saw)');
    t.same(up.answered, ['GET /items/1 HTTP/1.1', 'GET /items/2 HTTP/1.1'], 'the app answered each GET once');
    const write = await w.call('POST', '/items', { token: tok, body: '{"name":"x"}', headers: { 'content-type': 'application/json', 'idempotency-key': 'k-' + how } });
    t.equal(write.status, 502, 'a write is never sent twice by driftguard: the caller decides');
    t.equal(write.json?.reason, 'upstream-unavailable');
    t.match(write.json?.detail, /closed the connection before its answer was complete/);
    t.notOk(up.answered.some((l) => l.startsWith('POST')), 'and the app never answered it');
    t.equal((await w.call('GET', '/items/3', { token: tok })).status, 200, 'a new connection');
    t.equal((await w.call('HEAD', '/items/4', { token: tok })).status, 200, 'a HEAD on it is sent again likewise');
    t.same(up.answered.slice(2), ['GET /items/3 HTTP/1.1', 'HEAD /items/4 HTTP/1.1']);
  });
}

t.test('a GET whose connection fails twice gets its 502: sent again once, not in a loop', async (t) => {
  const answered: string[] = [];
  // Every connection is closed as soon as a request arrives on it.
  const server = createServer((socket) => { socket.on('error', () => {}); socket.on('data', () => { answered.push('x'); socket.destroy(); }); });
  const port = await listen(server);
  t.teardown(() => close(server));
  const w = await world(t, (r) => { r.proxy.upstream = `http://127.0.0.1:${port}`; });
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 502);
  t.equal(answered.length, 2, 'two attempts, each on a connection of its own');
});

t.test('proxy.timeouts.upstreamIdle: how long an idle upstream connection is kept for reuse', async (t) => {
  for (const [idle, connections] of [['4s', 1], ['200ms', 2]] as const) {
    const w = await world(t, (r) => { r.proxy.timeouts.upstreamIdle = idle; });
    let opened = 0;
    w.up.server.on('connection', () => { opened++; });
    const tok = await w.tok();
    t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
    await new Promise((r) => setTimeout(r, 500));
    t.equal((await w.call('GET', '/items/2', { token: tok })).status, 200);
    t.equal(opened, connections, `upstreamIdle ${idle}, 500 ms apart: ${connections} connection(s)`);
  }
});

t.test('a request sent again says so on its CLIENT span: http.request.resend_count 1', async (t) => {
  const up = await closingUpstream('destroy');
  t.teardown(() => up.close());
  const k = await testKey('ES256');
  const keys = await jwksServer(jwks(k));
  const otlp = await collector();
  t.teardown(async () => { await keys.close(); await otlp.close(); });
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.proxy.connections = 1;
    // The second request must find the first one's connection still kept: it waits for the first
    // span's export, which took more than the default upstreamIdle (4 s) on a busy machine (the
    // export thread starting), and the second request then went on a new connection, not sent again.
    r.proxy.timeouts.upstreamIdle = '1m';
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(() => dg.stop());
  const clientSpan = async () => {
    const traceId = randomHex(16);
    const res = await fetch(`${dg.url}/status`, { headers: { traceparent: traceparent(traceId, randomHex(8)) } });
    t.equal(res.status, 200);
    await res.text();
    return otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  };
  t.notOk('http.request.resend_count' in (await clientSpan()).attributes, 'sent once: no resend count');
  t.equal((await clientSpan()).attributes['http.request.resend_count'], 1, 'sent again on a new connection: counted');
});
