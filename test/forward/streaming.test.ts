// Bodies stream through driftguard both ways: the upstream gets the first chunks of a 50 MB
// upload before the client has sent the rest, and the client gets the first chunk of a slow
// answer before the upstream has finished it. A proxy that buffered whole bodies would
// deadlock in both tests (each side waits for the other), so the guards below fail the test
// instead of letting it hang.

import t from 'tap';
import { request, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { until, world as lifecycleWorld, startLifecycle, monitorsOnly, bearer } from '../lifecycle/support.ts';
import { world } from '../core/world.ts';

const MB = 1024 * 1024;

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms (buffered?)`)), ms); }),
  ]);
}

t.test('a 50 MB request body streams to the upstream: chunks arrive before the client finishes', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '10s'; });
  let received = 0;
  let firstChunk!: () => void;
  const upstreamGotData = new Promise<void>((r) => { firstChunk = r; });
  w.up.handler = (req, res) => {
    req.on('data', (c: Buffer) => { received += c.length; firstChunk(); });
    req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ received })); });
  };
  const total = 50 * MB;
  const chunk = Buffer.alloc(MB, 0x61);
  const tok = await w.tok();
  const heapBefore = process.memoryUsage().heapUsed;
  let heapPeak = heapBefore;
  const sampler = setInterval(() => { heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed); }, 10);
  t.teardown(() => clearInterval(sampler));
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(`${w.dg.url}/items/1/blob`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${tok}`, 'content-length': String(total), 'content-type': 'application/octet-stream' },
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    (async () => {
      // Send 1 MB, then wait until the upstream has seen data before sending the other 49.
      req.write(chunk);
      await within(upstreamGotData, 10_000, 'first chunk at the upstream');
      t.ok(received > 0 && received < total, `the upstream had ${received} bytes while the client had sent 1 MB`);
      for (let sent = MB; sent < total; sent += MB) {
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })().catch(reject);
  });
  const a = await within(answer, 30_000, 'the 50 MB upload');
  t.equal(a.status, 200);
  t.equal(JSON.parse(a.body).received, total, 'every byte arrived');
  clearInterval(sampler);
  const growth = heapPeak - heapBefore;
  t.ok(growth < 40 * MB, `heap peaked ${Math.round(growth / MB)} MB above the start for a 50 MB body through client, driftguard and upstream in this one process`);
});

t.test('a slow upstream response streams through: the client sees the first chunk before the upstream ends', async (t) => {
  const w = await world(t);
  let clientGotFirst!: () => void;
  const first = new Promise<void>((r) => { clientGotFirst = r; });
  let upstreamEnded = false;
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first chunk\n');
    // Only finish once the client has the first chunk: a buffering proxy never gets here.
    within(first, 5_000, 'first chunk at the client').then(() => { upstreamEnded = true; res.end('last chunk\n'); }, () => res.destroy());
  };
  const res = await fetch(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${await w.tok()}` } });
  t.equal(res.status, 200);
  const reader = res.body!.getReader();
  const { value } = await within(reader.read(), 5_000, 'first read');
  t.equal(new TextDecoder().decode(value), 'first chunk\n');
  t.notOk(upstreamEnded, 'the upstream had not finished when the client read the first chunk');
  clientGotFirst();
  let rest = '';
  for (;;) { const r = await reader.read(); if (r.done) break; rest += new TextDecoder().decode(r.value); }
  t.equal(rest, 'last chunk\n');
});

t.test('a response body that stalls longer than the response timeout is cut, never a hang', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '300ms'; });
  w.up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/plain' }); res.write('partial'); };
  const res = await fetch(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${await w.tok()}` } });
  t.equal(res.status, 200, 'the head was already sent');
  await t.rejects(within(res.text(), 5_000, 'the stalled body'), { name: 'TypeError', message: 'terminated' }, 'the client sees the connection cut (not the 5 s guard)');
});

t.test('an event stream: its head reaches the client before its first event, and one asked for with Accept may be quiet for longer than the response timeout', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '500ms'; });
  let release!: () => void;
  const released = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.flushHeaders();
    // The first event only once the client has the head, after a pause over the response timeout.
    void released.then(() => setTimeout(() => { res.write('data: first\n\n'); setTimeout(() => res.end('data: last\n\n'), 900); }, 900));
  };
  const tok = await w.tok();
  const seen = await new Promise<{ status: number; body: string; cut: boolean }>((resolve) => {
    const req = request(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}`, accept: 'text/event-stream' } }, (res) => {
      const out = { status: res.statusCode!, body: '', cut: false };
      release();
      res.setEncoding('utf8');
      res.on('data', (d: string) => { out.body += d; });
      res.on('end', () => resolve(out));
      res.on('error', () => { out.cut = true; resolve(out); });
    });
    req.end();
  });
  t.equal(seen.status, 200, 'the head came before any event (held back, the pause would have been a 504)');
  t.equal(seen.body, 'data: first\n\ndata: last\n\n', 'both events, each after a pause longer than proxy.timeouts.response');
  t.notOk(seen.cut, 'the stream ended as the upstream ended it');
});

t.test('an event stream asked for with Accept may be quiet for longer than clientIdle, up to tunnelIdle; past it driftguard closes it, recorded as its own cut', async (t) => {
  const w = await lifecycleWorld();
  let quiet = 2500;
  w.up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/event-stream' }); res.flushHeaders(); const timer = setTimeout(() => { res.end('data: x\n\n'); }, quiet); res.on('close', () => clearTimeout(timer)); };
  const dg = await startLifecycle(w.rules((r) => { r.proxy.timeouts = { response: '300ms', clientIdle: '1s', tunnelIdle: '4s' }; r.monitors = monitorsOnly({}); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const read = (path: string) => new Promise<{ body: string; cut: boolean }>((resolve) => {
    const req = request(`${dg.url}${path}`, { headers: { authorization: `Bearer ${tok}`, accept: 'text/event-stream' } }, (res) => {
      const out = { body: '', cut: false };
      res.setEncoding('utf8');
      res.on('data', (d: string) => { out.body += d; });
      res.on('end', () => resolve(out));
      res.on('error', () => { out.cut = true; resolve(out); });
    });
    req.on('error', () => resolve({ body: '', cut: true }));
    req.end();
  });
  const kept = await read('/items/1');
  t.same(kept, { body: 'data: x\n\n', cut: false }, 'quiet 2.5 s, over clientIdle (1 s) and under tunnelIdle (4 s): whole');
  quiet = 10_000;
  const closed = await read('/items/2');
  t.ok(closed.cut, 'quiet past tunnelIdle: closed');
  const record = () => dg.seen.find((s) => s.ctx.req.url === '/items/2');
  await until(() => record()?.forwarded !== undefined, 3000);
  t.match(record()?.forwarded, { status: 200, aborted: true, error: 'client idle' }, 'driftguard closed it for its idle time, not the client');
});

t.test('a request pipelined behind an event stream is held to clientIdle again, not the stream\'s tunnelIdle', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts = { response: '300ms', clientIdle: '1s', tunnelIdle: '20s', request: '60s' }; });
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url === '/items/1') { res.writeHead(200, { 'content-type': 'text/event-stream' }); res.write('data: x\n\n'); setTimeout(() => res.end('data: y\n\n'), 300); return; }
    req.on('end', () => res.end('ok'));
  };
  const tok = await w.tok();
  const stream = `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nAccept: text/event-stream\r\n\r\n`;
  // An upload that stalls after one byte of its thousand, pipelined behind the stream.
  const stall = 'GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nA';
  const socket = connect(w.port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  let got = '';
  socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
  socket.on('error', () => {});
  await new Promise((r) => socket.once('connect', r));
  socket.write(stream + stall);
  await until(() => got.includes('0\r\n\r\n'), 5000);
  const ended = Date.now();
  await within(new Promise((r) => socket.once('close', r)), 15_000, 'the stalled upload\'s close');
  t.ok(Date.now() - ended < 10_000, `closed ${Date.now() - ended} ms after the stream ended: near clientIdle (1 s), not tunnelIdle (20 s)`);
});

t.test('an event stream not asked for with Accept keeps the response timeout between chunks', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '300ms'; });
  w.up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/event-stream' }); res.write('data: 1\n\n'); };
  const res = await fetch(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${await w.tok()}`, accept: 'application/json' } });
  t.equal(res.status, 200);
  await t.rejects(within(res.text(), 5_000, 'the stalled stream'), { name: 'TypeError', message: 'terminated' }, 'cut after the response timeout (not the 5 s guard)');
});

t.test('by default, more event streams than the old pool of 64 stay open and a short request is still answered', async (t) => {
  const w = await world(t);
  const streams: ServerResponse[] = [];
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url === '/items/1') { res.writeHead(200, { 'content-type': 'text/event-stream' }); res.write('data: open\n\n'); streams.push(res); return; }
    res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}');
  };
  const tok = await w.tok();
  const clients: IncomingMessage[] = [];
  await Promise.all(Array.from({ length: 80 }, () => new Promise<void>((resolve, reject) => {
    const req = request(`${w.dg.url}/items/1`, { agent: false, headers: { authorization: `Bearer ${tok}`, accept: 'text/event-stream' } }, (res) => { clients.push(res); res.once('data', () => resolve()); });
    req.on('error', reject);
    req.end();
  })));
  t.teardown(() => { for (const c of clients) c.destroy(); for (const s of streams) s.destroy(); });
  t.equal(streams.length, 80, '80 event streams open through driftguard at once');
  const short = await fetch(`${w.dg.url}/items/2`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(short.status, 200, 'a short request beside them is answered (with a pool of 64 it waited for the connect timeout: 504)');
});

t.test('a client that goes away mid-upload does not wedge the proxy', async (t) => {
  const w = await world(t);
  let upstreamClosed!: () => void;
  const closed = new Promise<void>((r) => { upstreamClosed = r; });
  w.up.handler = (req, res) => {
    if (req.method === 'GET') { res.end('ok'); return; }
    req.resume(); req.on('close', () => upstreamClosed());
  };
  const req = request(`${w.dg.url}/items/1/blob`, { method: 'PUT', headers: { authorization: `Bearer ${await w.tok()}`, 'content-length': String(10 * MB) } });
  req.on('error', () => {});
  req.write(Buffer.alloc(MB));
  await new Promise((r) => setTimeout(r, 100));
  req.destroy();
  await within(closed, 5_000, 'the upstream request closed');
  const after = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(after.status, 200, 'the next request is served');
});

t.test('a chunked upload streams through and arrives whole', async (t) => {
  const w = await world(t);
  const { raw } = await import('../support/raw.ts');
  const tok = await w.tok();
  const chunks = ['first,', 'second,', 'x'.repeat(70_000)];
  const body = chunks.map((c) => `${c.length.toString(16)}\r\n${c}\r\n`).join('') + '0\r\n\r\n';
  const a = await raw(w.port, `PUT /items/1/blob HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${tok}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${body}`);
  t.equal(a.status, 200);
  t.equal(w.up.seen[0]!.bodyBytes, chunks.join('').length);
  t.notOk('transfer-encoding' in w.up.seen[0]!.headers && w.up.seen[0]!.headers['content-length'], 'not both framings');
});

t.test('a client that stops reading holds the upstream back: back-pressure from the response socket', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '10s'; });
  const total = 64 * MB;
  let written = 0;
  let upstreamDone!: () => void;
  const done = new Promise<void>((r) => { upstreamDone = r; });
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
    const chunk = Buffer.alloc(MB, 0x62);
    const pump = () => {
      while (written < total) {
        written += chunk.length;
        if (!res.write(chunk)) { res.once('drain', pump); return; }
      }
      res.end(upstreamDone);
    };
    pump();
  };
  const tok = await w.tok();
  const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    request(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } }, resolve).on('error', reject).end();
  });
  t.equal(res.statusCode, 200);
  res.pause();
  await new Promise((r) => setTimeout(r, 500));
  t.ok(written < total / 2, `with the client not reading, the upstream could write only ${Math.round(written / MB)} of 64 MB (socket buffers, not the whole body)`);
  let received = 0;
  res.on('data', (c: Buffer) => { received += c.length; });
  res.resume();
  await within(new Promise((r) => res.on('end', r)), 30_000, 'the rest of the body once the client reads');
  await within(done, 5_000, 'the upstream finishing');
  t.equal(received, total, 'every byte arrived once the client read again');
});

t.test('a client that goes away mid-download stops the upstream response, and the proxy serves on', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '10s'; });
  let upstreamClosed!: () => void;
  const closed = new Promise<void>((r) => { upstreamClosed = r; });
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url !== '/items/2') { res.end('ok'); return; }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const timer = setInterval(() => res.write(Buffer.alloc(64 * 1024)), 5);
    res.on('close', () => { clearInterval(timer); upstreamClosed(); });
  };
  const tok = await w.tok();
  await new Promise<void>((resolve, reject) => {
    const req = request(`${w.dg.url}/items/2`, { headers: { authorization: `Bearer ${tok}` } }, (res) => {
      res.once('data', () => { req.destroy(); resolve(); });
    });
    req.on('error', () => {});
    req.on('close', () => resolve());
    req.end();
    setTimeout(() => reject(new Error('no data within 5 s')), 5_000).unref();
  });
  await within(closed, 5_000, 'the upstream response closed after the client left');
  const after = await w.call('GET', '/items/1', { token: tok });
  t.equal(after.status, 200, 'the next request is served');
});

t.test('an upstream that sends 103 Early Hints before its answer: the client gets the final answer', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    req.resume();
    res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('final');
  };
  const r = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(r.status, 200);
  t.equal(r.text, 'final');
});

t.test('an upstream that sends a 100 Continue nobody asked for: a 502 that says so, and a GET never sent twice', async (t) => {
  const w = await world(t);
  let got = 0;
  // Raw bytes: a server that sends 100 on every request (undici reads no 100 it did not ask for).
  w.up.handler = (req) => { req.resume(); got++; req.socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'); };
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 502);
  t.equal(a.json?.reason, 'upstream-unavailable');
  t.match(a.json?.detail, /an interim 100 Continue it was not asked for.*\(UPSTREAM_UNREADABLE\)/, 'not "closed the connection": it answered');
  t.equal(got, 1, 'sent once: the upstream answered, so the GET is not sent again');
});

t.test('an upstream that dies mid-body: the client connection is cut, never a hang or a second answer', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url !== '/items/2') { res.end('ok'); return; }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' });
    res.write('only part of it');
    setTimeout(() => res.socket?.destroy(), 50);
  };
  const res = await fetch(`${w.dg.url}/items/2`, { headers: { authorization: `Bearer ${await w.tok()}` } });
  t.equal(res.status, 200, 'the head was already sent');
  await t.rejects(within(res.text(), 5_000, 'the cut body'), { name: 'TypeError', message: 'terminated' }, 'the client sees the connection cut (not the 5 s guard)');
  const after = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(after.status, 200, 'the next request is served');
});

for (const [name, rest, status, reason, detail] of [
  ['a reset after its head', (s: Socket) => { s.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n'); setTimeout(() => s.destroy(), 50); }, 502, 'upstream-unavailable', /closed the connection before its answer was complete/],
  ['a bad chunk in the same write as its head', (s: Socket) => { s.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n'); }, 502, 'upstream-unavailable', /could not be parsed/],
  ['a status outside 100-599', (s: Socket) => { s.write('HTTP/1.1 999 Odd\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok'); }, 502, 'upstream-unavailable', /a status outside 100-599\) \(UPSTREAM_UNREADABLE\)/],
  // Below 100, undici's parser trips an assertion of its own (before: "the upstream failed (ERR_ASSERTION)").
  ...['000', '042', '099'].map((code) => [`status ${code}, below 100`, (s: Socket) => { s.write(`HTTP/1.1 ${code} Odd\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok`); }, 502, 'upstream-unavailable', /a status outside 100-599\) \(UPSTREAM_UNREADABLE\)$/] as const),
  ['a head and then silence past the response timeout', (s: Socket) => { s.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n'); }, 504, 'upstream-timeout', /did not answer in time/],
] as const) {
  t.test(`an upstream that fails before the first byte of its body: the client gets a problem, not a cut with nothing sent: ${name}`, async (t) => {
    const w = await world(t, (r) => { r.proxy.timeouts.response = '300ms'; });
    // Raw bytes on the upstream's socket: a head Node's own server would not send this way.
    w.up.handler = (req) => { req.resume(); w.up.handler = undefined; rest(req.socket); };
    const a = await w.call('GET', '/items/1', { token: await w.tok() });
    t.equal(a.status, status, 'before: the head was taken as sent, and the connection cut with no byte of it on the wire');
    t.equal(a.json?.reason, reason);
    t.match(a.json?.detail, detail);
    t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'the next request is served');
  });
}

/**
 * Send a PUT with a 2 MB Content-Length and only its first KiB on one connection; then, once
 * the answer is in, the rest and a second request. What the connection did, and when.
 */
async function earlyAnswer(port: number, tok: string): Promise<{ head: string; statuses: string[]; closedAfterMs?: number }> {
  const s = connect(port, '127.0.0.1');
  let got = '';
  let closedAt: number | undefined;
  s.on('data', (c: Buffer) => { got += c.toString('latin1'); });
  s.on('error', () => {});
  s.on('close', () => { closedAt = performance.now(); });
  s.write(`PUT /items/1/blob HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-length: 2000000\r\n\r\n` + 'A'.repeat(1024));
  for (let i = 0; i < 100 && !got.includes('\r\n\r\n'); i++) await new Promise((r) => setTimeout(r, 20));
  const answeredAt = performance.now();
  s.write('A'.repeat(2000000 - 1024));
  s.write('GET /status HTTP/1.1\r\nhost: x\r\n\r\n');
  for (let i = 0; i < 100 && closedAt === undefined; i++) await new Promise((r) => setTimeout(r, 20));
  s.destroy();
  return { head: got.slice(0, got.indexOf('\r\n\r\n')), statuses: got.match(/HTTP\/1\.1 \d+/g) ?? [], ...(closedAt !== undefined ? { closedAfterMs: closedAt - answeredAt } : {}) };
}

for (const [name, handler, status] of [
  ['the upstream refuses the upload early (413, body unread)', (_req: IncomingMessage, res: ServerResponse) => { res.writeHead(413, { 'content-type': 'text/plain' }); res.end('too large'); }, 413],
  ['the upstream drops the connection mid-upload (502)', (req: IncomingMessage) => { req.once('data', () => req.socket.destroy()); }, 502],
] as const) {
  t.test(`an answer before the whole upload was read closes the connection and says so: ${name}`, async (t) => {
    const w = await world(t);
    // The first request only; then the default handler again.
    w.up.handler = (req, res) => { w.up.handler = undefined; handler(req, res); };
    const r = await earlyAnswer(w.port, await w.tok());
    t.match(r.head, new RegExp(`^HTTP/1\\.1 ${status} `), `the client got the ${status}`);
    t.match(r.head, /\r\nconnection: close\r\n/i, 'with Connection: close: the rest of its body will not be read');
    t.notMatch(r.head, /keep-alive/i);
    // Before: the answer said keep-alive, and the connection stalled, the second request
    // unanswered, until the keep-alive timeout reset it (about 6.5 s).
    t.ok(r.closedAfterMs !== undefined && r.closedAfterMs < 1_500, `driftguard closed the connection at once (${r.closedAfterMs?.toFixed(0)} ms)`);
    t.same(r.statuses, [`HTTP/1.1 ${status}`], 'and answered nothing else on it');
    t.equal((await w.call('GET', '/status')).status, 200, 'a new connection is served');
  });
}

/** A raw connection that sends `head` and then nothing (and, unless `read`, reads nothing). */
function stalled(port: number, head: string, read = true): { socket: Socket; text: () => string } {
  const s = connect(port, '127.0.0.1');
  let got = '';
  s.on('data', (c: Buffer) => { got += c.toString('latin1'); });
  s.on('error', () => {});
  if (!read) s.pause();
  s.write(head);
  return { socket: s, text: () => got };
}

t.test('a request that finds every upstream connection busy waits at most the connect timeout: 504, and never goes later', async (t) => {
  const w = await world(t, (r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '500ms', response: '2s' }; });
  // An upload that stalls holds the pool's one connection (undici's response timeout only
  // starts once the body is sent).
  const slow = stalled(w.port, 'GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nA');
  t.teardown(() => slow.socket.destroy());
  t.ok(await until(() => w.up.seen.length === 1), 'the stalled upload holds the connection');
  const started = performance.now();
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  const waited = performance.now() - started;
  t.equal(a.status, 504, 'no connection free in time (before: no answer at all, for as long as the pool stayed full)');
  t.equal(a.json?.code, 'upstream-timeout');
  // Before: "the upstream did not answer in time", though the upstream was never asked.
  t.match(a.json?.detail, /^no upstream connection was free in time: every one of proxy\.connections was busy/, 'driftguard\'s pool, not the upstream');
  t.ok(waited >= 450 && waited < 1_500, `after about the connect timeout (${waited.toFixed(0)} ms)`);
  slow.socket.destroy();
  t.equal((await w.call('GET', '/items/2', { token: await w.tok() })).status, 200, 'once the connection is free, requests go through');
  t.same(w.up.seen.map((s) => s.url), ['/status', '/items/2'], 'the timed-out request never reached the upstream');
});

t.test('a client connection silent while its request is handled is closed after clientIdle, which frees the upstream connection', async (t) => {
  const w = await world(t, (r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '500ms', response: '1s', clientIdle: '1500ms' }; });
  // When the answer last moved: the client's connection is silent from about then (the buffers
  // between here and the client that does not read are full), not from when it connected. (Node
  // holds off a socket's timeout once while a write it queued is still draining: about twice
  // clientIdle, 3 s, even on an idle machine.) On a busy machine the request reached the
  // upstream late, and the close measured from the connect came past the bound (3545 ms).
  let movedAt = 0;
  w.up.handler = (req, res) => {
    if (req.url !== '/status?big') { req.resume(); req.on('end', () => res.end('ok')); return; }
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(1024 * 1024);
    let n = 0;
    const pump = (): void => { movedAt = performance.now(); while (n < 64) { n++; if (!res.write(chunk)) { res.once('drain', pump); return; } } res.end(); };
    pump();
  };
  // An upload that stalls, then an answer the client does not read: each held the pool's one
  // connection for as long as the client kept its connection open.
  for (const [name, head, read] of [
    ['an upload that stalls', 'GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nA', true],
    ['a 64 MiB answer the client does not read', 'GET /status?big HTTP/1.1\r\nhost: x\r\n\r\n', false],
  ] as const) {
    // When driftguard closed its side: the time of the event, not of the poll that found it
    // (late by the poll's turn on a busy machine).
    let closedAt = Infinity;
    w.dg.dg.traffic.once('connection', (socket: Socket) => { socket.once('close', () => { closedAt = performance.now(); }); });
    const opened = performance.now();
    const c = stalled(w.port, head, read);
    t.teardown(() => c.socket.destroy());
    t.ok(await until(() => w.dg.dg.inFlight === 1), `${name}: in flight`);
    // (A client that does not read would not see the close either: driftguard's side is what counts.)
    t.ok(await until(() => w.dg.dg.inFlight === 0, 5_000), `${name}: closed by driftguard (before: never)`);
    t.ok(await until(() => closedAt < Infinity), `${name}: its connection closed`);
    // Silent since the head was sent (the stalled upload), or since the answer last moved.
    const closedAfter = closedAt - (read ? opened : movedAt);
    // Not before clientIdle; the bounded wait above (5 s, with nothing else to close it: the
    // request timeout is minutes) is the other side, not a timing of the machine.
    t.ok(closedAfter >= 1_300, `${name}: not before clientIdle (${closedAfter.toFixed(0)} ms)`);
    t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, `${name}: the upstream connection is free again`);
  }
});

// A client reading 16 KiB every 300 ms: 64 MiB would take about 20 minutes. clientIdle is far
// away: a slow reader may or may not trip it; clientRead must cut it either way. The second
// asks with an Upgrade header: an upstream without a WebSocket route serves the handshake's GET
// as any GET, and the non-switched answer went through a terminal stage of its own.
for (const [what, upgrade] of [
  ['a client reading a large answer just often enough to stay under clientIdle is cut off at proxy.timeouts.clientRead, which frees the upstream connection', ''],
  ['an Upgrade header is no way around clientRead: a handshake the upstream answers without switching, read slowly, is cut too', 'connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n'],
] as const) {
  t.test(what, async (t) => {
    const w = await lifecycleWorld();
    w.up.handler = (req, res) => {
      req.resume();
      if (req.url !== '/items/1?big') { res.end('{}'); return; }
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(1024 * 1024);
      let n = 0;
      const pump = (): void => { while (n < 64) { n++; if (!res.write(chunk)) { res.once('drain', pump); return; } } res.end(); };
      pump();
    };
    const dg = await startLifecycle(w.rules((r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '500ms', response: '1s', clientIdle: '30s', clientRead: '1s' }; r.monitors = monitorsOnly({}); }));
    t.teardown(async () => { await dg.close(); await w.close(); });
    const tok = await w.token();
    const c = connect(Number(new URL(dg.url).port), '127.0.0.1');
    c.on('error', () => {});
    c.pause();
    c.write(`GET /items/1?big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\n${upgrade}\r\n`);
    const drip = setInterval(() => { c.read(16 * 1024); }, 300);
    t.teardown(() => { clearInterval(drip); c.destroy(); });
    const record = () => dg.seen.find((s) => s.ctx.req.url === '/items/1?big');
    t.ok(await until(() => record()?.forwarded !== undefined, 6_000), 'cut by driftguard (before: held the pool\'s one connection for as long as it read)');
    t.match(record()?.forwarded, { status: 200, aborted: true, error: 'client too slow' }, 'its record says why');
    const next = await fetch(`${dg.url}/items/2`, { headers: bearer(tok) });
    t.equal(next.status, 200, 'the upstream connection is free again');
    await next.text();
  });
}

t.test('an answer its client reads as fast as it comes is never cut by clientRead, however long it streams', async (t) => {
  const w = await lifecycleWorld();
  // A chunk every 100 ms for 2.5 s: the client is never the one that is waited for.
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    let n = 0;
    const tick = setInterval(() => { res.write(Buffer.alloc(1024)); if (++n === 25) { clearInterval(tick); res.end(); } }, 100);
    res.on('close', () => clearInterval(tick));
  };
  const dg = await startLifecycle(w.rules((r) => { r.proxy.timeouts = { clientRead: '1s' }; r.monitors = monitorsOnly({}); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  t.equal((await res.arrayBuffer()).byteLength, 25 * 1024, 'whole');
});

t.test('a client trickling its body under clientIdle is cut off at proxy.timeouts.request, which frees the upstream connection', async (t) => {
  const w = await world(t, (r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '500ms', response: '1s', clientIdle: '1500ms', request: '1s' }; });
  w.up.handler = (req, res) => { req.resume(); req.on('end', () => res.end('ok')); };
  // 1,000 bytes announced, one sent every 300 ms: never silent for clientIdle, done in 300 s.
  const opened = performance.now();
  const c = stalled(w.port, 'GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nA');
  const drip = setInterval(() => c.socket.write('A'), 300);
  t.teardown(() => { clearInterval(drip); c.socket.destroy(); });
  t.ok(await until(() => w.up.seen.length === 1), 'the trickled upload reaches the upstream and holds the pool\'s one connection');
  t.ok(await until(() => w.dg.dg.inFlight === 0, 5_000), 'closed by driftguard (before: held for as long as the client trickled)');
  const closedAfter = performance.now() - opened;
  t.ok(closedAfter >= 900 && closedAfter < 3_000, `after about the request limit and its checking interval (${closedAfter.toFixed(0)} ms)`);
  clearInterval(drip);
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'the upstream connection is free again');
});

t.test('a slow upload that completes within proxy.timeouts.request goes through whole', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts = { response: '1s', clientIdle: '1500ms', request: '3s' }; });
  const c = stalled(w.port, 'GET /status HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nA');
  t.teardown(() => c.socket.destroy());
  for (let i = 0; i < 4; i++) { await new Promise((r) => setTimeout(r, 300)); c.socket.write('A'); }
  t.ok(await until(() => /^HTTP\/1\.1 200/.test(c.text())), 'answered 200 after 1.2 s of trickling');
  t.equal(w.up.seen.at(-1)?.bodyBytes, 5, 'the whole body reached the upstream');
});

t.test('a raw UTF-8 filename in the upstream\'s Content-Disposition reaches the client byte for byte, behind a Content-Length too', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  for (const name of ['é', '日本']) {
    const bytes = Buffer.from(name, 'utf8');
    // Content-Length first, as most upstreams send it.
    w.up.handler = (req, res) => { req.resume(); res.socket!.end(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Disposition: attachment; filename="caf'), bytes, Buffer.from('.txt"\r\n\r\nok')])); };
    const out = await new Promise<Buffer>((resolve) => {
      const s = connect(w.port, '127.0.0.1');
      const chunks: Buffer[] = [];
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('error', () => {});
      s.on('close', () => resolve(Buffer.concat(chunks)));
      s.write(`GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nConnection: close\r\n\r\n`);
    });
    // Before: é arrived as the byte e9; 日本 made the answer a `502 OK`.
    t.match(out.toString('latin1'), /^HTTP\/1\.1 200 OK\r\n/, `${name}: the upstream's 200`);
    t.ok(out.includes(Buffer.concat([Buffer.from('filename="caf'), bytes, Buffer.from('.txt"')])), `${name}: the filename's bytes as sent`);
    t.match(out.toString('latin1'), /\r\ncontent-length: 2\r\n/i, `${name}: and its length`);
  }
});

// An answer without length or chunks (to HTTP/1.0, the one an upstream gives a handshake it does
// not switch) cut by proxy.timeouts.clientIdle: before, a FIN, after which a client that paused
// and then read took what it had as the whole answer.
for (const [what, head] of [
  ['HTTP/1.0', 'GET /items/1 HTTP/1.0\r\nhost: x\r\n'],
  ['a handshake the upstream does not switch', 'GET /items/1 HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n'],
] as const) {
  t.test(`${what}: an answer that runs to the close, cut at clientIdle, is reset, and recorded cut: client idle`, async (t) => {
    const w = await lifecycleWorld();
    // Never ends.
    w.up.handler = (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = (): void => { while (!res.destroyed) { if (!res.write(chunk)) { res.once('drain', pump); return; } } };
      pump();
    };
    const dg = await startLifecycle(w.rules((r) => { r.proxy.timeouts = { response: '500ms', clientIdle: '1s', clientRead: '0s' }; r.monitors = monitorsOnly({}); r.credentials = { taskBindingAt: 'never' }; }));
    t.teardown(async () => { await dg.close(); await w.close(); });
    const c = connect(Number(new URL(dg.url).port), '127.0.0.1');
    let how = 'a clean end';
    let closed = false;
    c.on('error', (e: NodeJS.ErrnoException) => { how = e.code ?? e.message; });
    c.on('close', () => { closed = true; });
    c.pause();
    c.write(`${head}authorization: Bearer ${await w.token()}\r\n\r\n`);
    // Reads nothing for 3 s: the idle limit (1 s) cuts it; then reads what it has.
    await new Promise((r) => setTimeout(r, 3_000));
    c.resume();
    t.ok(await until(() => closed, 5_000), 'the connection closed');
    t.equal(how, 'ECONNRESET', 'reset: it cannot look whole');
    const record = () => dg.seen.find((s) => s.ctx.req.url === '/items/1');
    await until(() => record()?.forwarded !== undefined, 3000);
    t.match(record()?.forwarded, { status: 200, aborted: true, error: 'client idle' }, 'driftguard closed it for its idle time, not the client');
  });
}

t.test('an answer to HTTP/1.0 cut mid-body resets the client\'s connection: without length or chunks, it cannot look whole', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"items":[1,2,');
    setTimeout(() => res.socket!.destroy(), 200);
  };
  for (const version of ['1.0']) {
    const got = await new Promise<{ text: string; how: string }>((resolve) => {
      const s = connect(w.port, '127.0.0.1');
      let text = '';
      let how = 'a clean end';
      s.on('data', (d: Buffer) => { text += d.toString('latin1'); });
      s.on('error', (e: NodeJS.ErrnoException) => { how = e.code ?? e.message; });
      s.on('close', () => resolve({ text, how }));
      s.write(`GET /items/1 HTTP/${version}\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n\r\n`);
    });
    t.match(got.text, /^HTTP\/1\.1 200 [^]*\{"items":\[1,2,/, `HTTP/${version}: the start of the answer`);
    // Before, for HTTP/1.0: a FIN after the partial body, which its client takes as the whole answer.
    t.equal(got.how, 'ECONNRESET', `HTTP/${version}: then a reset`);
  }
});

t.test('an HTTP/1.1 answer cut mid-body is not reset: the whole earlier answer of a pipelined request still reaches the client', async (t) => {
  const SIZE = 1024 * 1024;
  const w = await lifecycleWorld();
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url === '/items/1') { res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) }); res.end(Buffer.alloc(SIZE, 0x61)); return; }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.write('partial');
    setTimeout(() => res.socket?.destroy(), 300);
  };
  const dg = await startLifecycle(w.rules((r) => { r.monitors = monitorsOnly({}); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const c = connect(Number(new URL(dg.url).port), '127.0.0.1');
  t.teardown(() => c.destroy());
  c.pause();
  let got = 0;
  let how = '';
  c.on('error', (e: NodeJS.ErrnoException) => { how ||= `error ${e.code}`; });
  c.on('end', () => { how ||= 'end'; });
  c.write(`GET /items/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\n\r\nGET /items/2 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\n\r\n`);
  const second = () => dg.seen.find((s) => s.ctx.req.url === '/items/2');
  t.ok(await until(() => second()?.forwarded !== undefined, 8_000), 'the second answer is cut');
  c.on('data', (d: Buffer) => { got += d.length; });
  c.resume();
  t.ok(await until(() => how !== '', 3_000), 'the connection ends');
  // Before (a reset for every cut): 128,551 bytes, then ECONNRESET.
  t.ok(got > SIZE, `the whole first answer reached the client (${got} bytes)`);
});
