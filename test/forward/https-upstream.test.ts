// An https upstream: the TLS server name (SNI) and the name its certificate is checked
// against are driftguard's, never the caller's Host (undici takes both from each request's
// Host unless told otherwise: a caller could pick the backend of an upstream that routes by
// SNI, and a caller varying its Host made the pool drop its connections). driftguard runs as
// a subprocess so that NODE_EXTRA_CA_CERTS, read at start only, can trust the test's
// certificate; the upstream is a real node:https server on loopback.

import t from 'tap';
import { createServer } from 'node:https';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { selfSignedCertificate } from '../support/tls.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { jwksServer } from '../support/servers.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';
import { raw } from '../support/raw.ts';

t.test('an https upstream gets the same server name whatever Host the caller sends: proxy.upstreamHost\'s, else none for an address', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-https-'));
  const cert = selfSignedCertificate({ dnsNames: ['api.internal'], ips: ['127.0.0.1'] });
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, cert.cert);
  const seen: { sni: string | false; host: string | undefined; socket: unknown }[] = [];
  const up = createServer({ cert: cert.cert, key: cert.key }, (req, res) => {
    seen.push({ sni: (req.socket as { servername?: string | false }).servername ?? false, host: req.headers.host, socket: req.socket });
    res.end('{"ok":true}');
  });
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { up.closeAllConnections(); up.close(); });
  const origin = `https://127.0.0.1:${(up.address() as AddressInfo).port}`;
  const key = await testKey('ES256');
  const keys = await jwksServer(jwks(key));
  t.teardown(() => keys.close());
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });

  // With a trailing dot, sent without it (RFC 6066): an SNI router matching names exactly would miss it.
  for (const upstreamHost of [undefined, 'api.internal', 'api.internal.']) {
    const dg = await runDriftguard(writeRules(baseRules(origin, keys.url, (r) => { if (upstreamHost) r.proxy.upstreamHost = upstreamHost; }), dir), [], { NODE_EXTRA_CA_CERTS: ca });
    t.teardown(() => dg.kill());
    const port = Number(new URL(dg.url).port);
    const before = seen.length;
    // Keep-alive on one client connection: the pool may reuse its upstream connection.
    for (const host of ['127.0.0.1', 'api.internal', 'shop.example', 'admin.internal']) {
      const a = await raw(port, `GET /items/1 HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${tok}\r\nConnection: close\r\n\r\n`);
      // Before: shop.example's and admin.internal's were 502 ERR_TLS_CERT_ALTNAME_INVALID,
      // the certificate checked against the caller's name, and api.internal's was sent as SNI.
      t.equal(a.status, 200, `${upstreamHost ?? 'no upstreamHost'}, Host: ${host}: forwarded`);
    }
    const mine = seen.slice(before);
    t.equal(mine.length, 4);
    const sni = upstreamHost?.replace(/\.$/, '') ?? false;
    t.same([...new Set(mine.map((s) => s.sni))], [sni], `the server name is ${sni || 'none (an address)'} every time`);
    t.equal(new Set(mine.map((s) => s.socket)).size, 1, 'one upstream connection for all four: never dropped for a change of name');
    dg.kill();
    await dg.exited;
  }
});
