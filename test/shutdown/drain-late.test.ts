// What arrives after a drain began is not decided: the rest of a head that was arriving, a
// request or WebSocket handshake on a connection an earlier answer kept alive, and a reload
// that was loading keys. A real driftguard (in-process: drain() is what SIGTERM calls), a
// real upstream and raw sockets on loopback.

import t from 'tap';
import { connect, type Socket } from 'node:net';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { world } from '../core/world.ts';
import { listen, close } from '../support/servers.ts';
import { jwks } from '../support/keys.ts';
import { reloader } from '../../proxy/reload.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { until } from '../lifecycle/support.ts';

interface Conn { readonly s: Socket; text(): string; readonly ended: Promise<void>; readonly closed: Promise<void> }

/** A connection that keeps its own side open after driftguard ends its (as a client racing the FIN does). */
async function open(port: number): Promise<Conn> {
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((r) => s.once('end', () => r()));
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  await new Promise((r) => s.once('connect', r));
  return { s, text: () => Buffer.concat(chunks).toString('latin1'), ended, closed };
}

/**
 * An answer streaming when the drain begins, to `sent` (whose first request is GET
 * /status?stream), its head saying keep-alive: the upstream sends its first part at once and the
 * rest after the drain began, and answers anything else `text` at once. Returns once that answer
 * is done and driftguard has ended the connection, with the drain's promise.
 */
async function drainAcrossStream(t: Parameters<typeof world>[0], sent: string, text: string): Promise<{ w: Awaited<ReturnType<typeof world>>; c: Conn; drained: Promise<unknown> }> {
  const w = await world(t);
  let finish: (() => void) | undefined;
  w.up.handler = (req, res) => {
    req.resume();
    if (req.url === '/status?stream') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part;');
      finish = () => res.end('last part');
    } else {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(text);
    }
  };
  const c = await open(w.port);
  c.s.write(sent);
  t.ok(await until(() => c.text().includes('first part;')), 'the stream started');
  t.match(c.text(), /connection: keep-alive/i, 'its head went out saying keep-alive');
  const drained = w.dg.dg.drain(3_000);
  await new Promise((r) => setTimeout(r, 50));
  finish!();
  await c.ended;
  t.match(c.text(), /last part/, 'the answer in flight was finished');
  return { w, c, drained };
}

t.test('the rest of a head that was arriving when the drain began is neither decided nor forwarded', async (t) => {
  const w = await world(t);
  const c = await open(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\n');
  await new Promise((r) => setTimeout(r, 50));
  const drained = w.dg.dg.drain(3_000);
  await c.ended; // driftguard's FIN: nothing is in flight
  c.s.write('\r\n');
  await drained;
  await new Promise((r) => setTimeout(r, 100));
  t.equal(w.up.seen.length, 0, 'not forwarded (it was, with its answer thrown away: a write would have been carried out)');
  t.equal(c.text(), '', 'and nothing answered');
});

t.test('a connection kept alive by an answer sent before the drain is closed once that answer is done', async (t) => {
  const { w, c, drained } = await drainAcrossStream(t, 'GET /status?stream HTTP/1.1\r\nHost: a\r\n\r\n', 'late');
  // A client that had not seen the FIN yet sends its next request (before: forwarded, answered).
  c.s.write('GET /status?late HTTP/1.1\r\nHost: a\r\n\r\n');
  await drained;
  await new Promise((r) => setTimeout(r, 100));
  t.same(w.up.seen.map((s) => s.url), ['/status?stream'], 'the late request never reached the upstream');
  t.notMatch(c.text(), /late/);
});

t.test('a request pipelined before the drain behind an answer that said keep-alive is not decided once the drain begins', async (t) => {
  // Both in one write: the second is read before the drain, and waits its turn.
  const { w, c, drained } = await drainAcrossStream(t, 'GET /status?stream HTTP/1.1\r\nHost: a\r\n\r\nGET /status?second HTTP/1.1\r\nHost: a\r\n\r\n', 'second answered');
  await drained;
  // Before: its turn came as the first answer ended, and it was decided and forwarded.
  t.same(w.up.seen.map((s) => s.url), ['/status?stream'], 'the waiting request never reached the upstream');
  t.notMatch(c.text(), /second answered/);
});

t.test('a request read behind an answer in flight during the drain is not decided; the answer still finishes', async (t) => {
  const w = await world(t);
  let finishStream: (() => void) | undefined;
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first part;');
    finishStream = () => res.end('last part');
  };
  const c = await open(w.port);
  c.s.write('GET /status?stream HTTP/1.1\r\nHost: a\r\n\r\n');
  t.ok(await until(() => c.text().includes('first part;')), 'the stream started');
  const drained = w.dg.dg.drain(3_000);
  c.s.write('GET /status?late HTTP/1.1\r\nHost: a\r\n\r\n');
  await new Promise((r) => setTimeout(r, 50));
  finishStream!();
  await drained;
  await c.ended;
  t.match(c.text(), /first part;[\s\S]*last part/, 'the answer in flight was finished');
  t.same(w.up.seen.map((s) => s.url), ['/status?stream'], 'the late request never reached the upstream');
});

t.test('a reload still loading keys when the drain begins puts nothing in force', async (t) => {
  // The issuer's keys moved to a server that answers only once the drain has begun.
  let answer: (() => void) | undefined;
  const keyServer = createServer((_req, res) => { answer = () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks(w.keys.es))); });
  const keysUrl = `http://127.0.0.1:${await listen(keyServer)}/jwks.json`;
  t.teardown(() => close(keyServer));
  const w = await world(t);
  const rules = baseRules(w.up.origin, w.jwks.url);
  const file = writeRules(rules);
  // The world's rules are the file's first state.
  await w.dg.dg.swap(loadRules(file));
  const logs: Record<string, unknown>[] = [];
  const reload = reloader(file, {}, w.dg.dg, (l) => logs.push(l));
  const before = w.dg.dg.generation.rules.hash;
  rules.identity.issuers[0].jwks.url = keysUrl;
  writeFileSync(file, JSON.stringify(rules));
  const reloading = reload.reload('SIGHUP');
  t.ok(await until(() => answer !== undefined), 'the key fetch began');
  reload.close();
  const drained = w.dg.dg.drain(1_000);
  answer!();
  const result = await reloading;
  await drained;
  t.match(result, { changed: false, error: 'driftguard is shutting down' });
  t.equal(w.dg.dg.generation.rules.hash, before, 'the rules in force are the ones the drain began with');
  t.equal(reload.status.failed, 0, 'not counted as a failed reload: the file was fine');
  t.notOk(logs.some((l) => l.msg === 'rules reloaded'), 'no line says new rules are in force');
});
