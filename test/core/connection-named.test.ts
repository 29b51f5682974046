// A header that Connection names is hop-by-hop: driftguard removes it before forwarding (RFC
// 9110 §7.6.1). A caller that names there a header its decision reads (the credential, the
// contract version, the idempotency key) would be decided on it and reach the upstream
// without it: refused, 400 malformed-request, never forwarded. Raw sockets (fetch would not
// send such a Connection header), real upstream, real driftguard with the lifecycle feature.

import t from 'tap';
import type { AddressInfo } from 'node:net';
import { raw } from '../support/raw.ts';
import { world, startLifecycle } from '../lifecycle/support.ts';

t.test('a Connection header naming a header the decision reads is refused; naming another is not', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  // An automation token without the contract claim: the header is its only declaration.
  const tok = await w.token({ contract: undefined });
  const post = (connection: string) => `POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContract-Version: 2026-09\r\nIdempotency-Key: k-${connection.length}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: ${connection}\r\n\r\n{}`;
  for (const connection of ['close, Contract-Version', 'close,contract-version', 'close, Idempotency-Key', 'close, Authorization', 'Keep-Alive, AUTHORIZATION']) {
    const a = await raw(port, post(connection));
    // Before: forwarded, and the upstream got no Contract-Version (or key, or credential).
    t.equal(a.status, 400, `Connection: ${connection}`);
    t.match(a.json(), { code: 'malformed-request', detail: /^the Connection header names (contract-version|idempotency-key|authorization), which driftguard decides requests by/ });
  }
  t.equal(w.up.seen.length, 0, 'none reached the upstream');
  const other = await raw(port, post('close, X-Debug'));
  t.equal(other.status, 200, 'naming another header is served');
  t.equal(w.up.seen[0]?.headers['contract-version'], '2026-09', 'and the upstream gets the contract version it was decided by');
});

t.test('with the idempotency monitor off, its header is no header driftguard decides by', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = { idempotency: { mode: 'off' } }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  const a = await raw(port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.token()}\r\nConnection: close, Idempotency-Key\r\n\r\n`);
  // Before: 400, "which this request is decided by".
  t.equal(a.status, 200);
});
