// A revocation list URL that has never been read (proxy/lifecycle/lists.ts): there is no last
// good list, and every request with a credential is refused until it is read, so its failures
// must not be logged as "the last good list stays in force". A real HTTP list server.

import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ListSource } from '../../proxy/lifecycle/lists.ts';
import { RevocationStore } from '../../proxy/lifecycle/revocations.ts';
import { matchEach } from '../support/lists.ts';

t.test('a list URL never read logs, at error, that credentials are refused until it is; once read, a failure keeps the last good list', async (t) => {
  let up = false;
  const server = createServer((_req, res) => {
    if (!up) { res.writeHead(500).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ revocations: [{ kind: 'jti', value: 'j1', reason: 'r' }] }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise((resolve) => server.close(resolve)));
  const logs: Record<string, unknown>[] = [];
  const source = new ListSource('url', `http://127.0.0.1:${(server.address() as AddressInfo).port}/list.json?token=s3cret`, new RevocationStore(), { log: (l) => { logs.push(l); }, now: Date.now, timeoutMs: 1000, maxEntries: 10 });
  await source.start(3_600_000);
  source.close();
  await source.refresh();
  t.equal(logs.length, 2, 'each failed read is reported, as before');
  for (const l of logs) {
    t.match(l, { level: 'error', msg: /^revocation list not read yet: every request with a credential is refused with 503 revocation-list-unavailable until it is; tried again within 5 s$/, source: 'url', error: 'HTTP 500' });
    t.notOk('entries' in l, 'no count of a list that was never read (before: "the last good list stays in force", entries 0, at warn)');
    t.notMatch(JSON.stringify(l), /s3cret/, 'the location is redacted');
  }

  up = true;
  await source.refresh();
  up = false;
  logs.length = 0;
  await source.refresh();
  matchEach(t, logs, [{ level: 'warn', msg: 'revocation list not refreshed; the last good list stays in force', entries: 1, error: 'HTTP 500' }], 'read once: the last good list does stay in force');
});

t.test('under revocation.mode audit or off, start-up does not wait for the list URL, and its failures are said as that mode makes them', async (t) => {
  // A list server that holds every request: under enforce, start() waits out the timeout.
  const held: import('node:http').ServerResponse[] = [];
  let failing = false;
  const server = createServer((_req, res) => { if (failing) res.writeHead(500).end(); else held.push(res); });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => { for (const r of held) r.destroy(); return new Promise((resolve) => server.close(resolve)); });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/list.json`;
  for (const mode of ['audit', 'off'] as const) {
    const logs: Record<string, unknown>[] = [];
    // A timeout of ten minutes: a start() that waited for the held request would outlast the test.
    const source = new ListSource('url', url, new RevocationStore(), { log: (l) => { logs.push(l); }, now: Date.now, timeoutMs: 600_000, maxEntries: 10, mode: () => mode });
    const before = held.length;
    await source.start(3_600_000);
    for (let i = 0; i < 500 && held.length === before; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal(held.length, before + 1, `${mode}: started, and its first fetch is still held`);
    source.close();
    failing = true;
    await source.refresh();
    failing = false;
    t.equal(logs.length, 1, `${mode}: the failure is reported`);
    t.match(logs[0], mode === 'audit'
      ? { level: 'warn', msg: /^revocation list not read yet: every request with a credential is a would-deny \(revocation-list-unavailable, revocation\.mode audit\) until it is/ }
      : { level: 'warn', msg: /^revocation list not read yet \(revocation\.mode off: nothing is refused for it\)/ }, `${mode}: at warn, saying what the mode does`);
    t.notMatch(String(logs[0]!.msg), /is refused with 503/, `${mode}: no claim that requests are refused`);
  }
});
