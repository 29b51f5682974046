// Unauthenticated clients that make a sidecar hold heap, within the connection limit: each of
// these ran the chart's 96 MiB heap out (exit 134) before the bound that now stops it. One
// real driftguard subprocess under the chart's NODE_OPTIONS, a real upstream with a slow and
// an endless answer, public operations, raw sockets on loopback; after each attack the
// process must still be running and answering.

import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { upstream } from '../support/servers.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { jwksServer } from '../support/servers.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const up = await upstream();
// /slow: never read, never answered. /big: an endless download, sent as fast as it is read.
up.handler = (req, res) => {
  if (req.url?.startsWith('/slow/')) return;
  req.resume();
  if (req.url?.startsWith('/big/')) {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 1);
    const more = () => { while (!res.destroyed && res.write(chunk)); };
    res.on('drain', more);
    more();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
};
const key = await testKey('ES256');
const keys = await jwksServer(jwks(key));
const values = parse(readFileSync(new URL('../../charts/driftguard/values.yaml', import.meta.url), 'utf8')) as { sidecar: { nodeOptions: string } };
const file = writeRules(baseRules(up.origin, keys.url, (r) => {
  r.proxy.timeouts.response = '30s';
  for (const [id, method, path] of [['slow', 'GET', '/slow/{n}'], ['slowUpload', 'POST', '/slow/{n}'], ['big', 'GET', '/big/{n}'], ['up', 'GET', '/up/{rest}']]) {
    r.contract.operations.push({ id, method, path, sensitivity: 'low', public: true });
  }
}));
const dg = await runDriftguard(file, [], { NODE_OPTIONS: values.sidecar.nodeOptions });
const port = Number(new URL(dg.url).port);
const attackers: Socket[] = [];
t.teardown(async () => { for (const s of attackers) s.destroy(); dg.kill(); await up.close(); await keys.close(); });

function attacker(p: number, onConnect: (s: Socket) => void): Socket {
  const s = connect({ port: p, host: '127.0.0.1', noDelay: true }, () => onConnect(s));
  s.on('error', () => {});
  attackers.push(s);
  return s;
}

async function stillServing(t: Test, what: string): Promise<void> {
  for (const s of attackers.splice(0)) s.destroy();
  await new Promise((r) => setTimeout(r, 300));
  const alive = await fetch(dg.admin + '/healthz').then((r) => r.status, () => 0);
  t.equal(alive, 200, `${what}: still answering (it was killed: JavaScript heap out of memory)`);
  t.notMatch(dg.output(), /heap out of memory/);
  if (alive !== 200) t.comment(dg.output().split('\n').filter((l) => !/^\s*\d+: 0x/.test(l)).slice(-30).join('\n'));
}

t.test('pipelined heads waiting their turn on many connections: the connections past a total are cut', async (t) => {
  // Each: a download it never reads, then 32 requests of 15 KiB heads waiting behind it (before: 200 of them killed it).
  const head = `GET /up/${'a'.repeat(15_000)} HTTP/1.1\r\nHost: a\r\n\r\n`;
  for (let i = 0; i < 250; i++) attacker(port, (s) => { s.pause(); s.write(`GET /big/${i} HTTP/1.1\r\nHost: a\r\n\r\n` + head.repeat(32)); });
  await new Promise((r) => setTimeout(r, 3_000));
  await stillServing(t, 'pipelined heads');
});

t.test('request bodies sent a byte a chunk to an upstream that does not read them', async (t) => {
  // Before: about 20 MiB of heap each, and 20 of them killed it within seconds.
  const chunks = Buffer.from('1\r\na\r\n'.repeat(10_000));
  for (let i = 0; i < 20; i++) {
    attacker(port, (s) => {
      s.write(`POST /slow/${i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const pump = () => { while (!s.destroyed && s.write(chunks)); };
      s.on('drain', pump);
      pump();
    });
  }
  await new Promise((r) => setTimeout(r, 4_000));
  await stillServing(t, 'bodies a byte a chunk');
});

t.test('request bodies sent a byte per TCP segment: to a slow upstream, and read whole by the monitors', async (t) => {
  // A byte per segment is a read of its own: before, a Buffer object per byte, held by the
  // upstream connection's queue (public, to a slow upstream) or by the monitors' whole-body
  // read (any valid token: 500 such requests killed it within seconds).
  const tok = await token({ key, sub: AGENT, scope: 'items.write', contract: '2026-09', ttl: 300 });
  for (let i = 0; i < 400; i++) {
    const monitored = i % 2 === 0;
    attacker(port, (s) => {
      s.write(monitored
        ? `PUT /items/${i}/blob HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${tok}\r\nIdempotency-Key: k${i}\r\nContent-Length: 65536\r\n\r\n`
        : `POST /slow/${i} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n`);
      let sent = 0;
      const tick = () => { if (s.destroyed || sent >= 65_000) return; s.write('a'); sent++; setImmediate(tick); };
      setTimeout(tick, 100);
    });
  }
  await new Promise((r) => setTimeout(r, 6_000));
  await stillServing(t, 'bodies a byte per segment');
});

t.test('bytes sent a byte at a time while a WebSocket handshake waits for the upstream', async (t) => {
  // Before: each byte a Buffer of its own; 60 handshakes killed it within 6 s.
  for (let i = 0; i < 100; i++) {
    attacker(port, (s) => {
      s.write(`GET /slow/${i} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      let sent = 0;
      const tick = () => { if (s.destroyed || sent >= 60_000) return; s.write('a'); sent++; setImmediate(tick); };
      setTimeout(tick, 100);
    });
  }
  await new Promise((r) => setTimeout(r, 6_000));
  await stillServing(t, 'early WebSocket bytes');
});
