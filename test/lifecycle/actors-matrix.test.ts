// Two trusted OAuth issuers, an unregistered agent-x quarantined or revoked as A's
// (["A","agent-x"]): which chains naming it are held. A level an issuer vouches for is that
// issuer's agent-x alone (B's passes); a level nobody vouches for (an untrusted or non-string
// iss, below a malformed level) is every agent-x it could be, A's included.
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso, monitorsOnly } from './support.ts';
import { ISSUER as A } from '../support/keys.ts';

const B = 'https://other.test.local';
const U = 'https://attacker.example';
const X = 'agent-x';
const status = async (res: Response) => { const text = await res.text(); return `${res.status}${res.status === 200 ? '' : ' ' + JSON.parse(text).code}`; };

// [label, token iss, act, expected held?]
const cases: [string, string, unknown, boolean][] = [
  ['B token, act {X}', B, { sub: X }, false],
  ['A token, act {X, iss B}', A, { sub: X, iss: B }, false],
  ['A token, act {X}', A, { sub: X }, true],
  ['B token, act {X, iss A}', B, { sub: X, iss: A }, true],
  ['B token, act {X, iss U}', B, { sub: X, iss: U }, true],
  ['A token, act {X, iss U}', A, { sub: X, iss: U }, true],
  ['A token, act {X, iss 42}', A, { sub: X, iss: 42 }, true],
  ['B token, act {X, iss 42}', B, { sub: X, iss: 42 }, false],
  ['B token, act {"" , act {X, iss B}}', B, { sub: '', act: { sub: X, iss: B } }, true],
  ['A token, act {"" , act {X, iss B}}', A, { sub: '', act: { sub: X, iss: B } }, true],
  ['B token, act {X, iss B} deep 20 under people', B, Array.from({ length: 19 }).reduce((inner: any, _, i) => ({ sub: `p${i}`, iss: B, act: inner }), { sub: X, iss: B }), false],
  ['A token, deep 20, X last, no iss', A, Array.from({ length: 19 }).reduce((inner: any, _, i) => ({ sub: `p${i}`, act: inner }), { sub: X }), true],
  ['A token, X past a malformed level at depth 10', A, Array.from({ length: 10 }).reduce((inner: any, _, i) => ({ sub: i === 5 ? '' : `p${i}`, act: inner }), { sub: X, iss: B }), true],
];

for (const kind of ['quarantine', 'revocation', 'revocation spaced'] as const)
t.test(`agent-x ${kind} as ["A","agent-x"]`, async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    trustAlso(r, B);
    r.consumers.unknown = 'allow';
    r.consumers.defaultKind = 'automation';
    r.delegation = { mode: 'off' };
    r.identity.maxTokenLifetime = { automation: '1h', human: '12h' };
    if (kind === 'quarantine') r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
    else r.revocation = { mode: 'enforce' };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  if (kind === 'quarantine') {
    for (let i = 0; i < 2; i++) await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss: A, sub: X, scope: '' })) }));
    const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
    t.comment('quarantined ' + JSON.stringify(q.quarantined.map((x: any) => x.subject)));
  } else {
    const value = kind === 'revocation' ? JSON.stringify([A, X]) : `[ "${A}" ,\n "${X}" ]`;
    const res = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value, reason: 'r' }) });
    t.equal(res.status, 201); await res.text();
  }
  for (const [label, iss, act, held] of cases) {
    const s = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ iss, sub: 'person-1', claims: { act } })) }));
    t.comment(`${label} -> ${s}`);
    if (held) t.not(s, '200', `${label} held`); else t.equal(s, '200', `${label} passes`);
  }
});
