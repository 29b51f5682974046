// GET /decisions under the chart's heap limits, against a ring full of the largest lines
// anyone can cause: denials of long unknown paths, sent without a token. The page used to be
// built whole (every line parsed, then one indented JSON string): one request for
// limit=10000 ended the sidecar with a V8 heap OOM (exit 134), and every proxied request
// with it. A real subprocess under the chart's NODE_OPTIONS.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const values = parse(readFileSync(fileURLToPath(new URL('../../charts/driftguard/values.yaml', import.meta.url)), 'utf8'));
const nodeOptions: string = values.sidecar.nodeOptions;
const up = await upstream();
const keys = await jwksServer(jwks(await testKey('ES256')));
const dg = await runDriftguard(writeRules(baseRules(up.origin, keys.url, (r) => {
  // Twice the default ring (8 MiB): the page's memory must not depend on the ring's size.
  r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none' }, recent: { maxBytes: 16 * 1024 * 1024 } };
})), [], { NODE_OPTIONS: nodeOptions });
t.teardown(async () => { dg.kill(); await up.close(); await keys.close(); });

t.test(`a full ring of long-path denials, and the largest page, under NODE_OPTIONS="${nodeOptions}"`, async (t) => {
  const path = '/' + 'x'.repeat(3000);
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < 7000) {
      next++;
      const res = await fetch(dg.url + path);
      await res.arrayBuffer();
      if (res.status !== 403) throw new Error(`expected a 403 denial, got ${res.status}`);
    }
  }));
  const pages = await Promise.all(Array.from({ length: 4 }, async () => {
    const res = await fetch(dg.admin + '/decisions?limit=10000');
    return { status: res.status, retryAfter: res.headers.get('retry-after'), body: JSON.parse(await res.text()) as { count: number; held: number; decisions: { path: string; reason: string }[] } };
  }));
  // Two answers of a list are written at once (LIST_ANSWERS); one asked for meanwhile gets 503.
  t.ok(pages.filter((p) => p.status === 200).length >= 2, `two pages at least: ${pages.map((p) => p.status).join(' ')}`);
  for (const { status, retryAfter, body } of pages) {
    t.ok(status === 200 || status === 503, `200 or 503: ${status}`);
    if (status === 503) { t.equal(retryAfter, '1'); continue; }
    t.ok(body.held > 5000, `the ring is full by its byte bound: ${body.held} decisions held`);
    t.equal(body.count, body.held, 'the page has every decision held');
    t.equal(body.decisions.length, body.count);
    t.ok(body.decisions.every((d) => d.reason === 'unknown-operation' && d.path.length === 2048), 'each a long-path denial');
  }
  const health = await fetch(dg.admin + '/healthz');
  t.equal(health.status, 200, 'still running (before: exit 134, JavaScript heap out of memory)');
  t.equal(dg.child.exitCode, null);
});

t.test('clients that never read their page hold two places at most, for 10 s: the heap does not keep their lists', async (t) => {
  const { connect } = await import('node:net');
  const { port } = new URL(dg.admin);
  // Two pages asked for and never read: each held its list (before: one such client per turn
  // of the ring held a ring's worth, and nine ran the chart's heap out).
  const stalled = await Promise.all(Array.from({ length: 2 }, async () => {
    const s = connect(Number(port), '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    s.pause();
    s.write('GET /decisions?limit=10000 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n');
    return s;
  }));
  t.teardown(() => { for (const s of stalled) s.destroy(); });
  // Once the child has both pages under way (a fixed 500 ms was not always enough for a loaded
  // child to have read them), a third list answer waits its turn. Asked again until then, 10 s at most.
  let busy = 0;
  for (const end = Date.now() + 10_000; busy !== 503 && Date.now() < end;) {
    await new Promise((r) => setTimeout(r, 100));
    const r = await fetch(dg.admin + '/decisions?limit=1');
    busy = r.status;
    await r.text();
  }
  t.equal(busy, 503, 'a third list answer waits its turn');
  // Places are by list: an incident responder's GET /revocations is not held up by them.
  const revocations = await fetch(dg.admin + '/revocations');
  await revocations.text();
  t.equal(revocations.status, 200, 'another list has places of its own');
  // Cut once they took nothing for 10 s (LIST_STALL_MS): their places are free again. (The
  // clients, paused, see no end of their connection: the server's side is what is checked.)
  let status = 0;
  for (let i = 0; i < 40 && status !== 200; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const r = await fetch(dg.admin + '/decisions?limit=1');
    status = r.status;
    await r.text();
  }
  t.equal(status, 200, 'their places are free again');
  t.equal(dg.child.exitCode, null, 'still running');
});
