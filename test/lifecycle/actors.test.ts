// An actor nobody vouches for (registered to another issuer, named by an iss the rules do not
// trust, or behind a malformed level) is weighed as every consumer it could be by the checks that
// restrict: a quarantined or revoked registered agent does not act on for people by being named
// under another issuer, trusted or not, in a token of either issuer.
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso, monitorsOnly } from '../lifecycle/support.ts';
import { AGENT, BOT } from '../support/driftguard.ts';

const OTHER = 'https://other.test.local';

/** AGENT's calls with BOT as its actor: named plainly, under an untrusted iss, under OTHER; each `status reason`. */
async function asBotFor(url: string, w: Awaited<ReturnType<typeof world>>): Promise<string[]> {
  const out: string[] = [];
  for (const act of [{ sub: BOT }, { sub: BOT, iss: 'https://attacker.example' }, { sub: BOT, iss: OTHER }]) {
    const res = await fetch(`${url}/items/1`, { headers: bearer(await w.token({ sub: AGENT, claims: { act } })) });
    const text = await res.text();
    out.push(`${res.status} ${res.status === 200 ? '' : JSON.parse(text).reason}`);
  }
  return out;
}

for (const [label, delegation] of [['unlisted: allow', { mode: 'enforce', unlisted: 'allow', consumers: [] }], ['defaults, AGENT lists BOT as its actor', { consumers: [{ subject: AGENT, actors: [BOT] }] }]] as const)
t.test(`a quarantined registered agent named under another trusted iss (delegation ${label})`, async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    trustAlso(r, OTHER);
    r.consumers.unknown = 'allow';
    r.delegation = structuredClone(delegation);
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // BOT (registered to ISSUER, declares getItem/deleteItem only): two undeclared calls quarantine it.
  for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/items`, { headers: bearer(await w.token({ sub: BOT })) })).text();
  const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
  t.comment('quarantined: ' + JSON.stringify(q.quarantined.map((x: any) => x.subject)));
  const [plain, untrusted, trustedOther] = await asBotFor(dg.url, w);
  t.comment(`act {sub: BOT} -> ${plain}; act {sub: BOT, iss: attacker} -> ${untrusted}; act {sub: BOT, iss: OTHER (trusted, BOT registered to ISSUER)} -> ${trustedOther}`);
  t.match(plain, /^403/);
  t.match(untrusted, /^403/);
  // A token of OTHER for an unregistered person, naming BOT under an untrusted iss (the case 2f4c289/6ea4f56 cover).
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: OTHER, sub: 'person-x', claims: { act: { sub: BOT, iss: 'https://attacker.example' } } })) });
  const otherTok = `${res.status} ${res.status === 200 ? '' : JSON.parse(await res.text()).reason}`;
  const res2 = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: OTHER, sub: 'person-x', claims: { act: { sub: BOT } } })) });
  const otherPlain = `${res2.status} ${res2.status === 200 ? '' : JSON.parse(await res2.text()).reason}`;
  t.comment(`token of OTHER for person-x, act {sub: BOT, iss: attacker} -> ${otherTok}; token of OTHER, act {sub: BOT} (no iss) -> ${otherPlain}`);
  t.match(otherPlain, /^403/, 'BOT named with no iss in a token of the other trusted issuer');
  t.match(trustedOther, /^403 consumer-quarantined/, 'an actor registered to another issuer is one nobody vouches for: its quarantine still holds');
  t.match(otherTok, /^403/, 'BOT under an untrusted iss in a token of the other trusted issuer');
});

t.test('a registered agent revoked as ["<its issuer>","<subject>"], named under another trusted iss', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    trustAlso(r, OTHER);
    r.consumers.unknown = 'allow';
    r.delegation = { mode: 'enforce', unlisted: 'allow', consumers: [] };
    r.revocation = { mode: 'enforce' };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const ISSUER = 'https://issuer.test.local';
  const posted = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: JSON.stringify([ISSUER, BOT]), reason: 'compromised' }) });
  t.comment(`POST /revocations -> ${posted.status} ${await posted.text()}`);
  const own = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: BOT })) });
  await own.text();
  const [plain, untrusted, trustedOther] = await asBotFor(dg.url, w);
  t.comment(`BOT's own call -> ${own.status}; act {sub: BOT} -> ${plain}; act {sub: BOT, iss: attacker} -> ${untrusted}; act {sub: BOT, iss: OTHER} -> ${trustedOther}`);
  t.equal(own.status, 401);
  t.match(plain, /^401/);
  t.match(untrusted, /^401/);
  t.match(trustedOther, /^401 credential-revoked/, 'nobody vouches for BOT under OTHER (registered to ISSUER): the revocation still holds');
});
