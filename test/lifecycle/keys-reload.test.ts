// A kept idempotency key survives reloads: the retried write is still a duplicate-write.
// Whose keys a delegated write holds is read from the token alone: the person and the agent as
// its act claim names it, vouched for by the rules in force or not. A reload that trusts or
// registers the agent moves no kept key (a retried write would reach the upstream twice), and
// agents nobody vouches for do not share a person's keys. A reload that moves
// monitors.maxBodyBytes across the body's size changes how it is fingerprinted (hashed, or by
// length), and does not make the same write another payload (422, "use a new key").

import t from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, AGENT } from '../support/driftguard.ts';
import { world, startLifecycle, bearer, monitorsOnly, trustAlso, type World } from './support.ts';

const OTHER = 'https://other.test.local';

/** Rules where any agent may act for AGENT, with the idempotency monitor alone; `trustOther` trusts OTHER too. */
function rules(w: World, trustOther = false) {
  return w.rules((r) => {
    if (trustOther) trustAlso(r, OTHER);
    r.credentials = { taskBindingAt: 'never' };
    r.consumers.unknown = 'allow';
    r.consumers.defaultKind = 'automation';
    r.delegation = { mode: 'enforce', unlisted: 'allow', consumers: [] };
    r.monitors = monitorsOnly({ idempotency: { at: 'medium', window: '1h' } });
  });
}

async function post(url: string, token: string, body: string): Promise<string> {
  const r = await fetch(`${url}/items`, { method: 'POST', headers: bearer(token, { 'idempotency-key': 'pay-1', 'content-type': 'application/json' }), body });
  const j = await r.json() as { reason?: string };
  return `${r.status}${j.reason ? ` ${j.reason}` : ''}`;
}

t.test('a write kept after a 500 is still a duplicate-write after a reload that trusts its agent\'s issuer', async (t) => {
  const w = await world();
  const dg = await startLifecycle(rules(w));
  t.teardown(async () => { await dg.close(); await w.close(); });
  let received = 0;
  w.up.handler = (req, res) => { req.resume(); req.on('end', () => { received++; res.writeHead(500); res.end('{}'); }); };
  // runner-7 under an iss the rules do not trust yet: nobody vouches for it.
  const token = await w.token({ sub: AGENT, claims: { act: { sub: 'runner-7', iss: OTHER } } });
  t.equal(await post(dg.url, token, '{"amount":100}'), '500', 'the upstream answered 500, so it may have acted: the key stays');
  t.equal(await post(dg.url, token, '{"amount":100}'), '409 duplicate-write');
  await dg.dg.swap(loadRules(writeRules(rules(w, true))));
  // Before: the agent, vouched for now, made another holder; the write went upstream again.
  t.equal(await post(dg.url, token, '{"amount":100}'), '409 duplicate-write', 'the same token, key and write after the reload');
  t.equal(received, 1, 'the upstream received the write once');
});

t.test('two agents nobody vouches for, acting for one person, each hold their own keys', async (t) => {
  const w = await world();
  const dg = await startLifecycle(rules(w));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const as = (actor: string) => w.token({ sub: AGENT, claims: { act: { sub: actor, iss: 'https://agents.partner.example' } } });
  t.equal(await post(dg.url, await as('agent-a'), '{"n":"from a"}'), '200');
  // Before: 422 idempotency-key-reused, the person's key space.
  t.equal(await post(dg.url, await as('agent-b'), '{"n":"from b"}'), '200', 'another agent\'s own write under the same key');
  t.equal(await post(dg.url, await as('agent-a'), '{"n":"from a"}'), '409 duplicate-write', 'the first agent\'s retry is still its duplicate');
  t.equal(await post(dg.url, await as('agent-a'), '{"n":"other"}'), '422 idempotency-key-reused', 'and its key with another payload is reused');
});

t.test('a write kept after a 500 is still a duplicate-write after a reload that moved maxBodyBytes across its size', async (t) => {
  const w = await world();
  const limited = (maxBodyBytes: number) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ maxBodyBytes, idempotency: { at: 'medium', window: '1h' } });
  });
  const dg = await startLifecycle(limited(65536));
  t.teardown(async () => { await dg.close(); await w.close(); });
  let received = 0;
  w.up.handler = (req, res) => { req.resume(); req.on('end', () => { received++; res.writeHead(500); res.end('{}'); }); };
  const token = await w.token();
  const body = JSON.stringify({ amount: 100, note: 'x'.repeat(100) });
  t.equal(await post(dg.url, token, body), '500', 'hashed under 65536: kept after the 500');
  await dg.dg.swap(loadRules(writeRules(limited(16))));
  // Before: 422 idempotency-key-reused, whose action says to send it again under a new key.
  t.equal(await post(dg.url, token, body), '409 duplicate-write', 'by its length now, still the same write');
  t.equal(await post(dg.url, token, JSON.stringify({ amount: 1 })), '422 idempotency-key-reused', 'a body of another length is another payload');
  await dg.dg.swap(loadRules(writeRules(limited(65536))));
  t.equal(await post(dg.url, token, body), '409 duplicate-write', 'and back');
  t.equal(received, 1, 'the upstream received the write once');
});
