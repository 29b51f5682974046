// Interim (1xx) answers from the upstream. driftguard passes none on, and the final head must
// still come within proxy.timeouts.response: undici restarts its own wait for the head at every
// interim answer, so an upstream sending 102 or 103 for ever held the request, its client and
// a pool connection until the client's idle limit cut them, unanswered (for ever with
// clientIdle 0s). A raw socket plays the client, with clientIdle 0s: only driftguard's answer
// ends the wait.

import t from 'tap';
import { connect } from 'node:net';
import { world, type World } from '../core/world.ts';

/** The upstream sends `interim` every 300 ms to every request (and handshake), then its final answer after `finalMs`, or never. */
function interimThen(t: Parameters<typeof world>[0], w: World, interim: string, finalMs?: number): void {
  const timers: NodeJS.Timeout[] = [];
  t.teardown(() => timers.forEach((x) => clearTimeout(x)));
  const feed = (socket: { destroyed: boolean; write(s: string): unknown }, end: () => void) => {
    timers.push(setInterval(() => { if (!socket.destroyed) socket.write(`HTTP/1.1 ${interim}\r\n\r\n`); }, 300));
    if (finalMs !== undefined) timers.push(setTimeout(end, finalMs));
  };
  w.up.handler = (req, res) => { req.resume(); feed(req.socket, () => { for (const x of timers.splice(0, 1)) clearInterval(x); res.end('{"ok":true}'); }); };
  // An upgraded socket is no longer the server's to close: end it when driftguard does.
  w.up.server.on('upgrade', (_req, socket) => { socket.on('end', () => socket.destroy()); socket.on('error', () => {}); feed(socket, () => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')); });
}

/** What a raw client gets for `head` within `ms`. */
async function rawAnswer(port: number, head: string, ms: number): Promise<{ text: string; took: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(head));
    let text = '';
    const done = () => { clearTimeout(timer); s.destroy(); resolve({ text, took: Date.now() - started }); };
    const timer = setTimeout(done, ms);
    s.setEncoding('latin1');
    s.on('data', (d: string) => { text += d; if (/\r\n\r\n[\s\S]*\}/.test(text)) done(); });
    s.on('error', () => {});
    s.on('close', done);
  });
}

/** Whether `done` holds within 2 s (the server sees the client's close a moment after it). */
async function settles(done: () => boolean): Promise<boolean> {
  for (let i = 0; i < 40 && !done(); i++) await new Promise((r) => setTimeout(r, 50));
  return done();
}

const limits = (r: Record<string, any>) => { r.proxy.timeouts.response = '1s'; r.proxy.timeouts.clientIdle = '0s'; };

for (const interim of ['103 Early Hints', '102 Processing']) {
  t.test(`an upstream that answers ${interim} for ever: 504 upstream-timeout within proxy.timeouts.response of the first`, async (t) => {
    const w = await world(t, limits);
    interimThen(t, w, interim);
    const a = await rawAnswer(w.port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.tok()}\r\n\r\n`, 6_000);
    t.match(a.text, /^HTTP\/1\.1 504 /, `a 504 (got ${JSON.stringify(a.text.slice(0, 40))} after ${a.took} ms)`);
    t.match(a.text, /"reason":"upstream-timeout"/);
    t.match(a.text, /the upstream did not answer in time/);
    t.ok(await settles(() => w.dg.dg.inFlight === 0), 'nothing left in flight');
  });
}

t.test('a WebSocket handshake whose upstream answers 103 for ever: 504 as well', async (t) => {
  const w = await world(t, limits);
  interimThen(t, w, '103 Early Hints');
  const a = await rawAnswer(w.port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.tok()}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`, 6_000);
  t.match(a.text, /^HTTP\/1\.1 504 /, `a 504 (got ${JSON.stringify(a.text.slice(0, 40))} after ${a.took} ms)`);
  t.ok(await settles(() => w.dg.dg.tunnels === 0), 'no handshake left waiting');
});

t.test('interim answers followed by the final one within proxy.timeouts.response: the final answer, none of the interim ones', async (t) => {
  const w = await world(t, limits);
  interimThen(t, w, '102 Processing', 800);
  const a = await rawAnswer(w.port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.tok()}\r\n\r\n`, 6_000);
  t.match(a.text, /^HTTP\/1\.1 200 /, `the upstream's 200 (got ${JSON.stringify(a.text.slice(0, 40))})`);
  t.notMatch(a.text, /102 Processing/, 'no interim answer passed on');
});

t.test('an interim answer while an upload is still being sent does not start the wait: the upload is as slow as its client', async (t) => {
  const w = await world(t, limits);
  let read = '';
  w.up.handler = (req, res) => {
    // As soon as it has the head, as Node's writeEarlyHints at a handler's start sends it.
    res.writeEarlyHints({ link: '</a.css>; rel=preload' });
    req.setEncoding('utf8');
    req.on('data', (d: string) => { read += d; });
    req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"ok":true}'); });
  };
  const body = '{"n":"abcd"}';
  const token = await w.tok();
  const started = Date.now();
  const text = await new Promise<string>((resolve) => {
    const s = connect(w.port, '127.0.0.1');
    let got = '';
    const done = () => { s.destroy(); resolve(got); };
    s.setEncoding('latin1');
    s.on('data', (d: string) => { got += d; if (/\r\n\r\n[\s\S]*\}/.test(got)) done(); });
    s.on('error', () => {});
    s.on('close', done);
    s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`);
    // A byte every 300 ms: the body takes 3.6 s, over proxy.timeouts.response (1 s).
    let i = 0;
    const tick = setInterval(() => { if (i < body.length && !s.destroyed) s.write(body[i++]!); else clearInterval(tick); }, 300);
  });
  // Before: 504 after about a second, the upstream holding a truncated write.
  t.match(text, /^HTTP\/1\.1 200 /, `the upstream's 200 (got ${JSON.stringify(text.slice(0, 40))} after ${Date.now() - started} ms)`);
  t.equal(read, body, 'the whole body reached the upstream');
});
