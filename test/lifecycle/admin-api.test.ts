// The lifecycle admin API as an operator reads and writes it: what GET /consumers,
// GET /revocations and GET /quarantine show, and what POST and DELETE /revocations answer.

import t from 'tap';
import { AGENT } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';
import { world, startLifecycle, bearer, trustAlso } from './support.ts';

const OTHER = 'https://other.test.local';

async function post(admin: string, body: Record<string, unknown>): Promise<Response> {
  return fetch(`${admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

t.test('GET /consumers lists every subject revocation that refuses a consumer, however it is spelled', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const call = async (iss: string, sub: string) => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub, iss })) }); await r.text(); return r.status; };
  t.equal(await call(OTHER, 'client-7'), 200);
  t.equal(await call(OTHER, 'client-8'), 200);
  t.equal(await call(OTHER, 'client-9'), 200);
  const revoke = async (value: string) => { const r = await post(dg.admin, { kind: 'subject', value, reason: 'leaked' }); await r.text(); return r.status; };
  t.equal(await revoke('client-7'), 201, 'a plain subject: from every issuer');
  t.equal(await revoke(`["${OTHER}", "client-8"]`), 201, 'a pair written with a space');
  t.equal(await revoke(JSON.stringify([ISSUER, AGENT])), 201, 'a registered consumer by its issuer and subject');
  t.equal(await revoke(JSON.stringify([ISSUER, 'client-9'])), 201, 'another issuer\'s client-9');
  t.equal(await call(OTHER, 'client-7'), 401);
  t.equal(await call(OTHER, 'client-8'), 401);
  t.equal(await call(OTHER, 'client-9'), 200, 'this issuer\'s client-9 is not revoked');
  const listed = await (await fetch(`${dg.admin}/consumers`)).json() as { consumers: { subject: string; revocations: { value: string }[] }[] };
  const of = (subject: string) => listed.consumers.find((c) => c.subject === subject)?.revocations.map((r) => r.value);
  t.same(of(JSON.stringify([OTHER, 'client-7'])), ['client-7']);
  t.same(of(JSON.stringify([OTHER, 'client-8'])), [`["${OTHER}", "client-8"]`]);
  t.same(of(AGENT), [JSON.stringify([ISSUER, AGENT])]);
  t.same(of(JSON.stringify([OTHER, 'client-9'])), [], 'a revocation of another issuer\'s same subject is not listed');
});

t.test('a consumer with a subject of kilobytes can be revoked by subject; a value past 4096 characters is refused', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // A SPIFFE ID may be 2048 bytes.
  const sub = 'spiffe://test.local/ns/batch/sa/' + 'w'.repeat(2048 - 32);
  const tok = await w.token({ sub, scope: 'items.read' });
  const call = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); await r.text(); return r.status; };
  t.equal(await call(), 200, 'served');
  const made = await post(dg.admin, { kind: 'subject', value: sub, reason: 'compromised' });
  await made.text();
  t.equal(made.status, 201, 'revoked by its subject');
  t.equal(await call(), 401, 'and refused');
  const paired = await post(dg.admin, { kind: 'subject', value: JSON.stringify([ISSUER, sub]), reason: 'compromised' });
  await paired.text();
  t.equal(paired.status, 201, 'and as ["<issuer>","<subject>"]');
  const long = await post(dg.admin, { kind: 'subject', value: 'x'.repeat(4097), reason: 'compromised' });
  t.equal(long.status, 400);
  t.match((await long.json() as { detail: string }).detail, /value must be a non-empty string \(at most 4096 characters\)/);
});
