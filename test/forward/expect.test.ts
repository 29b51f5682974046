// Expect: 100-continue. The 100 goes out only once the request is allowed and its body is
// wanted, so a denied upload is never sent; a denial then closes the connection, since the
// body the client holds back must not be read as its next request. Any other expectation is
// decided like the request it comes with, never answered by Node's own plain-text 417.
// A raw socket plays the client: fetch and http.request hide the interim 100.

import t from 'tap';
import { connect, type Socket } from 'node:net';
import { world, type World } from '../core/world.ts';
import { startLifecycle, world as lifecycleWorld } from '../lifecycle/support.ts';

/** A client that sends a head, then reads what comes back as text. */
function rawClient(port: number, head: string): { socket: Socket; text: () => string; waitFor: (re: RegExp, ms?: number) => Promise<boolean>; closed: Promise<void> } {
  const socket = connect(port, '127.0.0.1');
  let text = '';
  const waiters: (() => void)[] = [];
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => { text += d; for (const w of waiters.splice(0)) w(); });
  const closed = new Promise<void>((resolve) => socket.once('close', () => { for (const w of waiters.splice(0)) w(); resolve(); }));
  socket.on('error', () => {});
  socket.write(head);
  return {
    socket, text: () => text, closed,
    async waitFor(re, ms = 3_000) {
      const deadline = Date.now() + ms;
      while (!re.test(text)) {
        if (Date.now() > deadline || socket.destroyed) return re.test(text);
        await Promise.race([new Promise<void>((r) => waiters.push(r)), new Promise((r) => setTimeout(r, 50))]);
      }
      return true;
    },
  };
}

const head = (w: World | { port: number }, method: string, path: string, headers: Record<string, string>) =>
  `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1:${w.port}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;

t.test('a denied upload with Expect: 100-continue gets its denial, no 100, and the connection closes', async (t) => {
  const w = await world(t);
  const c = rawClient(w.port, head(w, 'PUT', '/items/1/blob', { expect: '100-continue', 'content-length': '5', 'content-type': 'text/plain' }));
  t.teardown(() => c.socket.destroy());
  t.ok(await c.waitFor(/\r\n\r\n\{.*\}$/s), 'a final answer arrived');
  t.match(c.text(), /^HTTP\/1\.1 401 /, 'the denial, first: no 100 before it');
  t.notMatch(c.text(), /100 Continue/, 'the client was never told to send the body');
  t.match(c.text(), /\r\nconnection: close\r\n/i, 'the connection is closed with the answer');
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, 3_000))]);
  t.ok(c.socket.destroyed || c.socket.readableEnded, 'driftguard closed it');
  t.equal(w.up.seen.length, 0, 'the upstream saw nothing');
});

t.test('an allowed upload gets its 100 at the forward, then the upstream gets the body', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  const c = rawClient(w.port, head(w, 'PUT', '/items/1/blob', { authorization: `Bearer ${tok}`, expect: '100-continue', 'content-length': '5', 'content-type': 'text/plain' }));
  t.teardown(() => c.socket.destroy());
  t.ok(await c.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/), '100 Continue once allowed');
  t.equal(c.text(), 'HTTP/1.1 100 Continue\r\n\r\n', 'and nothing else yet: the answer waits for the body');
  c.socket.write('hello');
  t.ok(await c.waitFor(/HTTP\/1\.1 200 [^]*"bodyBytes":5/), 'the upstream answered, having read the 5 bytes');
  t.equal(w.up.seen.length, 1);
  t.equal(w.up.seen[0]!.headers.expect, undefined, 'Expect is hop-by-hop: not forwarded');
  t.notMatch(c.text(), /Bearer/, 'no credential echoed');
});

t.test('another expectation is decided with its request, not answered by Node\'s plain 417', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  const allowed = rawClient(w.port, head(w, 'GET', '/items/1', { authorization: `Bearer ${tok}`, expect: 'x-wait-for-me' }));
  t.teardown(() => allowed.socket.destroy());
  t.ok(await allowed.waitFor(/HTTP\/1\.1 200 [^]*"ok":true/), 'forwarded, as a request without it');
  t.equal(w.up.seen[0]?.headers.expect, undefined, 'the expectation is not forwarded');
  const denied = rawClient(w.port, head(w, 'GET', '/items/1', { expect: 'x-wait-for-me' }));
  t.teardown(() => denied.socket.destroy());
  t.ok(await denied.waitFor(/\r\n\r\n\{.*\}$/s));
  t.match(denied.text(), /^HTTP\/1\.1 401 [^]*content-type: application\/problem\+json[^]*"code":"missing-credential"/i, 'a decision in problem+json');
});

t.test('a check that reads the body (the monitors\' fingerprint) sends the 100 before it reads', async (t) => {
  const w = await lifecycleWorld();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const port = Number(new URL(dg.url).port);
  const c = rawClient(port, head({ port }, 'POST', '/items', { authorization: `Bearer ${tok}`, expect: '100-continue', 'content-length': '7', 'content-type': 'application/json' }));
  t.teardown(() => c.socket.destroy());
  t.ok(await c.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/), '100 Continue');
  c.socket.write('{"a":1}');
  t.ok(await c.waitFor(/HTTP\/1\.1 200 [^]*"bodyBytes":7/), 'hashed, then forwarded whole');
});

t.test('a write refused for its missing idempotency key gets the 400 instead of the 100, though the monitors read bodies', async (t) => {
  const w = await lifecycleWorld();
  // The monitors at their defaults: retry-storm and traversal read a payment's body before the
  // idempotency check looks at its key.
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const port = Number(new URL(dg.url).port);
  const c = rawClient(port, head({ port }, 'POST', '/payments', { authorization: `Bearer ${await w.token()}`, expect: '100-continue', 'content-length': '12', 'content-type': 'application/json' }));
  t.teardown(() => c.socket.destroy());
  t.ok(await c.waitFor(/\r\n\r\n\{.*\}$/s), 'a final answer arrived');
  // Before: 100 Continue, the client's upload read, then the 400.
  t.match(c.text(), /^HTTP\/1\.1 400 [^]*"code":"idempotency-key-required"/, 'the refusal, first');
  t.notMatch(c.text(), /100 Continue/, 'the client was never told to send the body');
  t.equal(w.up.seen.length, 0, 'the upstream saw nothing');
  // With a key, the body is wanted: the 100 comes.
  const keyed = rawClient(port, head({ port }, 'POST', '/payments', { authorization: `Bearer ${await w.token()}`, 'idempotency-key': 'k-1', expect: '100-continue', 'content-length': '12', 'content-type': 'application/json' }));
  t.teardown(() => keyed.socket.destroy());
  t.ok(await keyed.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/), '100 Continue with a key');
  keyed.socket.write('{"amount":1}');
  t.ok(await keyed.waitFor(/HTTP\/1\.1 20\d /), 'then forwarded');
});
