// The admin listener's streamed list answers (AdminRoutes.jsonList): a HEAD answer looks at
// no item, and an item that cannot be shown cuts the answer off and is logged (headers are
// sent by then, so no 500 can follow). A real listener on loopback.

import t from 'tap';
import { request } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { AdminRoutes, createAdminServer } from '../../proxy/admin/server.ts';

const routes = new AdminRoutes();
let viewed = 0;
const items = Array.from({ length: 1000 }, (_, i) => i);
routes.add('GET', '/numbers', async (_req, res) => routes.jsonList(res, { total: items.length }, 'numbers', items, (i) => { viewed++; return { i }; }));
routes.add('GET', '/broken', async (_req, res) => routes.jsonList(res, {}, 'numbers', items, (i) => {
  if (i === 600) throw new TypeError('cannot show item 600 with secret Bearer abc.def.ghi');
  return { i };
}));
const lines: Record<string, unknown>[] = [];
const server = createAdminServer(routes, (l) => lines.push(l));
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const port = (server.address() as AddressInfo).port;
t.teardown(() => server.close());

function send(method: string, path: string, headers: Record<string, string> = {}, at = port): Promise<{ status: number; body: string; complete: boolean; error?: string; headers?: Record<string, unknown> }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port: at, method, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode!, body, complete: res.complete, headers: res.headers }));
      res.on('error', (err) => resolve({ status: res.statusCode!, body, complete: false, error: err.message }));
    });
    req.on('error', (err) => resolve({ status: 0, body: '', complete: false, error: err.message }));
    req.end();
  });
}

t.test('GET streams every item; HEAD answers the same head and views none', async (t) => {
  const get = await send('GET', '/numbers');
  t.equal(get.status, 200);
  t.equal((JSON.parse(get.body) as { numbers: unknown[] }).numbers.length, 1000);
  t.equal(viewed, 1000);
  viewed = 0;
  const head = await send('HEAD', '/numbers');
  t.equal(head.status, 200);
  t.equal(head.body, '');
  t.equal(viewed, 0, 'no item viewed for HEAD (before: all 1,000)');
});

t.test('an item that cannot be shown: the answer is cut off, the error logged without its message', async (t) => {
  const res = await send('GET', '/broken');
  t.equal(res.status, 200, 'the head was sent before the item failed');
  t.notOk(res.complete, 'the answer is cut off, not ended as if whole');
  t.ok(res.body.startsWith('{"numbers":[') && !res.body.includes('{"i":600}'), 'what arrived is the start of the list, up to the item that failed');
  const line = lines.find((l) => l.msg === 'admin request failed');
  t.match(line, { level: 'error', method: 'GET', path: '/broken', error: 'TypeError', answer: 'cut off' }, 'logged (before: nothing)');
  t.notMatch(JSON.stringify(lines), /Bearer|abc\.def/, 'the message, which may quote a credential, is not logged');
});

t.test('DNS rebinding: the admin listener answers for an IP address or localhost only', async (t) => {
  // A page on evil.example, its name turned to 127.0.0.1, is same-origin with the listener: no
  // Origin on its GET, and it read /decisions. Its Host is the only sign.
  for (const host of ['evil.example', 'evil.example:15000', 'localhost.evil.example', '127.0.0.1.nip.io:15000']) {
    const r = await send('GET', '/numbers', { host });
    t.equal(r.status, 403, host);
    t.match(r.body, /IP address or localhost only/);
  }
  for (const host of ['127.0.0.1', `127.0.0.1:${port}`, `localhost:${port}`, 'LOCALHOST', '[::1]:15000', '10.1.2.3:15021']) {
    t.equal((await send('GET', '/numbers', { host })).status, 200, host);
  }
});

t.test('the probe listener closes each connection after its answer; Allow names HEAD beside GET', async (t) => {
  const probes = createAdminServer(routes, () => {}, new Set(['/numbers']));
  await new Promise<void>((resolve) => probes.listen(0, '127.0.0.1', resolve));
  t.teardown(() => probes.close());
  const at = (probes.address() as AddressInfo).port;
  // Kept alive, 64 connections each asking every few seconds held every place, and the
  // kubelet's probes were refused.
  const r = await send('GET', '/numbers', { host: 'evil.example' }, at);
  t.equal(r.status, 200, 'any Host: the probe listener serves nothing a page may not read');
  t.equal(r.headers?.connection, 'close');
  // Every answer: a 404 (a path the admin listener serves, or none) and a 400 too.
  for (const path of ['/nope', '/decisions', '//[']) {
    const other = await send('GET', path, {}, at);
    t.ok(other.status === 404 || other.status === 400, `${path}: ${other.status}`);
    t.equal(other.headers?.connection, 'close', `${path}: closed after its answer`);
  }
  const wrong = await send('POST', '/numbers');
  t.equal(wrong.status, 405);
  t.equal(wrong.headers?.allow, 'GET, HEAD', 'a GET route serves HEAD too');
});

t.test('one answer at a time: pipelined requests end their connection, and every answer closes it (admin and probe listeners)', async (t) => {
  let built = 0;
  const big = new AdminRoutes();
  // As /metrics builds its whole text for each request.
  big.add('GET', '/text', async (_req, res) => { built++; res.setHeader('content-type', 'text/plain'); res.end('x'.repeat(10_000)); });
  for (const only of [undefined, new Set(['/text'])]) {
    const listener = createAdminServer(big, () => {}, only);
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    t.teardown(() => listener.close());
    const at = (listener.address() as AddressInfo).port;
    const name = only ? 'probe listener' : 'admin listener';
    // Kept alive, a connection asking every few seconds held a place for good: the app, on the
    // admin listener's loopback, held all 64 and an operator's POST /revocations was dropped.
    const one = await send('GET', '/text', {}, at);
    t.equal(one.headers?.connection, 'close', `${name}: the answer closes its connection`);
    // One write of 500 pipelined requests: each built and queued its whole answer (a few such
    // connections of GET /metrics ran the heap out).
    built = 0;
    const text = await new Promise<string>((resolve) => {
      const s = connect(at, '127.0.0.1');
      const got: Buffer[] = [];
      s.on('data', (c: Buffer) => got.push(c));
      s.on('error', () => {});
      s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      s.write('GET /text HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(500));
    });
    t.ok((text.match(/HTTP\/1\.1 200 /g) ?? []).length <= 1, `${name}: at most the first answered`);
    t.ok(built <= 1, `${name}: at most one answer built (${built})`);
  }
});
