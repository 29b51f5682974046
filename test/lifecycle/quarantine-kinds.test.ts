// A reload that stops watching a kind of consumer (monitors.kinds) lifts that kind's
// quarantines, as a reload to quarantine.mode: off lifts them all.
import t, { type Test } from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, AGENT, HUMAN } from '../support/driftguard.ts';
import { world, startLifecycle, monitorsOnly, bearer } from './support.ts';
import { matchEach } from '../support/lists.ts';

t.test('monitors.kinds narrowed by a reload: the kind no longer watched is no longer quarantined; watched again, it is', async (t) => {
  const { w, dg, rules } = await agentQuarantined(t);
  const good = await w.token();
  const before = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal((await before.json() as { code: string }).code, 'consumer-quarantined', 'quarantined while automations are watched');
  // The operator stops watching automations (only humans now).
  await dg.dg.swap(loadRules(writeRules(rules(['human']))));
  const after = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  const body = await after.text();
  t.equal(after.status, 200, `an automation is no longer watched: not refused as quarantined (got ${after.status} ${body.slice(0, 120)})`);
  // Watched again while the quarantine lasts: it holds again.
  await dg.dg.swap(loadRules(writeRules(rules(['automation', 'human']))));
  const again = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal((await again.json() as { code: string }).code, 'consumer-quarantined', 'watched again: quarantined for the rest of its period');
});

for (const kinds of [['human'], ['human', 'automation']]) {
  t.test(`monitors.kinds ${JSON.stringify(kinds)}: a person quarantined for its own calls is quarantined through its agent too`, async (t) => {
    const w = await world();
    const dg = await startLifecycle(w.rules((r) => {
      r.credentials = { taskBindingAt: 'never' };
      r.delegation = { mode: 'enforce', consumers: [{ subject: HUMAN, actors: [AGENT] }] };
      r.monitors = { kinds, ...monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } }) };
    }));
    t.teardown(async () => { await dg.close(); await w.close(); });
    const weak = await w.token({ sub: HUMAN, scope: 'items.read' });
    for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); }
    const own = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN })) });
    t.equal((await own.json() as { code: string }).code, 'consumer-quarantined', 'its own call');
    const viaAgent = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: AGENT } } })) });
    t.equal((await viaAgent.json() as { code: string }).code, 'consumer-quarantined', 'through its agent: the quarantine was placed for a person\'s calls, which are watched');
  });
}

t.test('GET /quarantine shows the kind a quarantine was placed for, and whether it is watched now', async (t) => {
  const { w, dg, rules } = await agentQuarantined(t);
  const listed = async () => (await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { subject: string; kind: string; watched: boolean }[] }).quarantined;
  matchEach(t, await listed(), [{ subject: AGENT, kind: 'automation', watched: true }]);
  await dg.dg.swap(loadRules(writeRules(rules(['human']))));
  matchEach(t, await listed(), [{ subject: AGENT, kind: 'automation', watched: false }], 'kept, and shown as holding nobody');
});

// A quarantine that holds nobody (its kind no longer watched) does not keep a new one from being
// placed for the calls now watched (found by a review).
t.test('person quarantined through an unvouched agent (automation), kinds then [human]: its own denials never quarantine it', async (t) => {
  const w = await world();
  const rules = (kinds: string[]) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.delegation = { mode: 'enforce', unlisted: 'allow', consumers: [] };
    r.monitors = { kinds, ...monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } }) };
  });
  const dg = await startLifecycle(rules(['automation']));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // The person's calls through an agent whose iss nobody trusts: the person's share, an automation's calls.
  const viaStranger = await w.token({ sub: HUMAN, scope: 'items.read', claims: { act: { sub: 'spiffe://x/bot', iss: 'https://untrusted.example' } } });
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(viaStranger), body: '{}' }); t.equal(r.status, 403, `denial ${i}: ${(await r.text()).slice(0, 80)}`); }
  const q1 = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: unknown[] };
  matchEach(t, q1.quarantined, [{ subject: HUMAN, kind: 'automation', watched: true }], 'quarantined for the automation calls');
  // The operator now watches people only.
  await dg.dg.swap(loadRules(writeRules(rules(['human']))));
  const weak = await w.token({ sub: HUMAN, scope: 'items.read' });
  for (let i = 0; i < 6; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); }
  const own = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN })) });
  const body = await own.text();
  t.equal(own.status, 403, `six watched (human) denials in a minute, denials: 3: the person is quarantined (got ${own.status} ${body.slice(0, 100)})`);
  const q2 = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: unknown[] };
  matchEach(t, q2.quarantined, [{ subject: HUMAN, kind: 'human', watched: true }], 'a quarantine of its own kind now, placed over the one that held nobody');
});

/** A world whose agent is quarantined (three refusals) while monitors.kinds is [automation]; `rules(kinds)` for a reload. */
async function agentQuarantined(t: Test) {
  const w = await world();
  const rules = (kinds: string[]) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = { kinds, ...monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } }) };
  });
  const dg = await startLifecycle(rules(['automation']));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); }
  return { w, dg, rules };
}
