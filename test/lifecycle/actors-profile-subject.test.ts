// An unregistered SPIFFE agent (only its trust domain's spiffe issuer vouches for it:
// foreignSubject) quarantined or revoked under the name /consumers gives it
// (["<spiffe issuer>","<SPIFFE ID>"]) is held in an OAuth token's chain that names it with no
// iss, the usual RFC 8693 exchange: the token's issuer cannot vouch for the name.
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso, monitorsOnly } from './support.ts';
import { HUMAN } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';

const SPIRE = 'https://spire.example';
const SVC = 'spiffe://spire.example/ns/ai/sa/agent';

function setup(r: Record<string, any>) {
  trustAlso(r, SPIRE);
  const spire = r.identity.issuers[1];
  spire.profile = 'spiffe';
  spire.trustDomain = 'spire.example';
  spire.algorithms = ['ES256'];
  r.consumers.unknown = 'allow';
  r.consumers.defaultKind = 'automation';
}

const status = async (res: Response) => { const text = await res.text(); return `${res.status} ${res.status === 200 ? '' : JSON.parse(text).code}`; };

for (const [label, delegation] of [
  ['unlisted: allow', { mode: 'enforce', unlisted: 'allow', consumers: [] }],
  ['defaults, HUMAN lists the agent as its actor', { consumers: [{ subject: HUMAN, actors: [SVC] }] }],
] as const)
t.test(`quarantined SPIFFE agent acting through an oauth token (${label})`, async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    setup(r);
    r.delegation = structuredClone(delegation);
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // The agent's own SVID calls: two refusals (no scope) quarantine it.
  for (let i = 0; i < 2; i++) t.comment('own call ' + await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: SPIRE, sub: SVC, scope: '' })) })));
  const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
  t.comment('quarantined: ' + JSON.stringify(q.quarantined.map((x: any) => [x.subject, x.key])));
  t.equal(q.quarantined.length, 1, 'the agent is quarantined');
  const own = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: SPIRE, sub: SVC })) }));
  t.match(own, /^403 consumer-quarantined/, 'its own SVID call is held');
  // The person's IdP token, exchanged for the agent: act {sub: <agent's SPIFFE ID>} (no iss).
  const before = w.up.seen.length;
  const delegated = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: SVC } } })) }));
  const withIss = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: SVC, iss: SPIRE } } })) }));
  t.comment(`act {sub: SVC} in ${ISSUER}'s token -> ${delegated}; act {sub: SVC, iss: SPIRE} -> ${withIss}; upstream got ${w.up.seen.length - before}`);
  t.match(delegated, /^403 consumer-quarantined/, 'the oauth issuer cannot vouch for a SPIFFE ID of spire.example: nobody vouches, the agent\'s quarantine holds');
});

t.test('SPIFFE agent revoked as the ["<issuer>","<subject>"] /consumers gives it, acting through an oauth token', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    setup(r);
    r.delegation = { consumers: [{ subject: HUMAN, actors: [SVC] }] };
    r.revocation = { mode: 'enforce' };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  await (await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: SPIRE, sub: SVC })) })).text();
  const consumers = await (await fetch(`${dg.admin}/consumers`)).json() as any;
  const entry = JSON.stringify(consumers).match(/"(\[\\"https:\/\/spire\.example\\",\\"spiffe:[^"]*)"/);
  const key = JSON.stringify([SPIRE, SVC]);
  t.comment('GET /consumers: ' + JSON.stringify(consumers).slice(0, 400));
  t.ok(entry || JSON.stringify(consumers).includes(JSON.stringify(key).slice(1, -1)), 'GET /consumers names the agent as ["<spire>","<svc>"]');
  const posted = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: key, reason: 'compromised' }) });
  t.comment(`POST /revocations ${key} -> ${posted.status}`); await posted.text();
  const own = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: SPIRE, sub: SVC })) }));
  const delegated = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: SVC } } })) }));
  t.comment(`own SVID -> ${own}; act {sub: SVC} in ${ISSUER}'s token -> ${delegated}`);
  t.match(own, /^401 credential-revoked/);
  t.match(delegated, /^401 credential-revoked/, 'the revoked agent does not act on for the person');
});
