// The body time limit (proxy.timeouts.request) is a timer per request with a body still
// arriving. It must not outlive the request: after the answer, and after the connection, it
// is cleared, whatever ended first. Timers with the test's limit are counted by wrapping
// setTimeout and clearTimeout in this process (driftguard runs in it), not a mock of anything
// driftguard talks to.

import t from 'tap';
import { connect } from 'node:net';

const LIMIT = 7_777;
const armed = new Set<unknown>();
const realSet = globalThis.setTimeout;
const realClear = globalThis.clearTimeout;
(globalThis as { setTimeout: unknown }).setTimeout = (fn: () => void, ms?: number) => {
  const h = realSet(fn, ms);
  if (ms === LIMIT) armed.add(h);
  return h;
};
(globalThis as { clearTimeout: unknown }).clearTimeout = (h: NodeJS.Timeout | undefined) => { armed.delete(h); realClear(h); };

const { world } = await import('./world.ts');

/** Send `data` on a new connection; resolve with what came back once it closes (or after `ms`). */
function exchange(port: number, data: string, ms = 400): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let out = '';
    s.on('error', () => {});
    s.on('data', (c: Buffer) => { out += c.toString('latin1'); });
    s.on('connect', () => s.write(data));
    s.on('close', () => resolve(out));
    realSet(() => s.destroy(), ms);
  });
}

t.test('no body timer outlives its request or its connection', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts = { connect: '1s', response: '5s', request: `${LIMIT}ms` }; });
  const tok = await w.tok();
  const body = 'x'.repeat(200_000);
  const cases: [string, string][] = [
    ['allowed upload', `PUT /items/1/blob HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${tok}\r\nContent-Length: ${body.length}\r\n\r\n${body}`],
    ['refused upload, body sent whole', `PUT /items/1/blob HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n${body}`],
    ['refused upload, Expect: 100-continue, body never sent', `PUT /items/1/blob HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`],
    ['refused upload, Connection: close, body partly sent', `PUT /items/1/blob HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}`],
    ['refused upload, HTTP/1.0, body partly sent', `PUT /items/1/blob HTTP/1.0\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}`],
  ];
  for (const [name, data] of cases) {
    armed.clear();
    await exchange(w.port, data);
    await new Promise((r) => realSet(r, 300));
    t.equal(armed.size, 0, `${name}: cleared (three kept the request and its socket for the limit)`);
  }
});
