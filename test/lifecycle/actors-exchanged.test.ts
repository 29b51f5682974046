// The usual RFC 8693 exchange: an OAuth IdP's token for a person, act {sub: <the agent's SPIFFE
// ID>} (no iss). The IdP cannot vouch for the name (only the spiffe issuer can), yet the agent's
// denials count under ["<idp>","<SPIFFE ID>"], which the quarantine check weighs for such a level,
// never towards the person's: the person's own calls go on, and an agent that misbehaves for
// several people is quarantined for all of them.
import t, { type Test } from 'tap';
import { world, startLifecycle, bearer, monitorsOnly, withSpire } from './support.ts';
import { HUMAN } from '../support/driftguard.ts';

const SVC = 'spiffe://spire.example/ns/ai/sa/agent';
const BOB = 'bob@test.local';

/** Agents exchanged at the IdP (withSpire), quarantined after two denials. */
async function exchanged(t: Test) {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    withSpire(r);
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  return { w, dg };
}

const status = async (res: Response) => { const text = await res.text(); return `${res.status} ${res.status === 200 ? '' : JSON.parse(text).code}`; };

t.test('an SVID agent exchanged at the IdP: whose quarantine do its denials fill?', async (t) => {
  const { w, dg } = await exchanged(t);
  // The agent, acting for alice, twice calls what the token's scope does not allow.
  for (let i = 0; i < 2; i++) t.comment('agent for alice: ' + await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, scope: '', claims: { act: { sub: SVC } } })) })));
  const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
  t.comment('quarantined: ' + JSON.stringify(q.quarantined.map((x: any) => x.key ?? x.subject)));
  const alice = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN })) }));
  const agentForBob = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: BOB, claims: { act: { sub: SVC } } })) }));
  t.comment(`alice's own call -> ${alice}; the agent for bob -> ${agentForBob}`);
  t.match(alice, /^200/, "the person's own calls go on (README: its denials count towards the agent's quarantine, not the person's)");
  t.match(agentForBob, /^403 consumer-quarantined/, 'the agent is stopped for everyone it acts for');
});

t.test('an agent that spreads its denials over several people is quarantined for all of them', async (t) => {
  const { w, dg } = await exchanged(t);
  const people = ['p1@test.local', 'p2@test.local', 'p3@test.local', 'p4@test.local'];
  for (const p of people) t.comment(`agent for ${p}: ` + await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: p, scope: '', claims: { act: { sub: SVC } } })) })));
  const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
  const next = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: 'p5@test.local', claims: { act: { sub: SVC } } })) }));
  t.comment(`after 4 denials: quarantined ${JSON.stringify(q.quarantined.map((x: any) => x.key ?? x.subject))}; the agent for p5 -> ${next}`);
  t.match(next, /^403 consumer-quarantined/, 'four denials (threshold 2) quarantine the agent');
});
