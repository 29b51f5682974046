// Odd chains through every check that weighs actors (declared operations, quarantine, revocation,
// the sweep), with delegation off so that each reaches them: no 500, no exception logged.
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso, monitorsOnly } from './support.ts';
import { HUMAN, BOT } from '../support/driftguard.ts';

const SPIRE = 'https://spire.example';
const K = 'https://kubernetes.default.svc.cluster.local';

t.test('odd chains', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    trustAlso(r, SPIRE); trustAlso(r, K);
    Object.assign(r.identity.issuers[1], { profile: 'spiffe', trustDomain: 'spire.example', algorithms: ['ES256'] });
    Object.assign(r.identity.issuers[2], { profile: 'kubernetes', algorithms: ['ES256'] });
    r.consumers.registry = r.consumers.registry.filter((c: any) => !c.subject.startsWith('spiffe://'));
    r.consumers.registry.push({ subject: 'System:ServiceAccount:x:y', kind: 'automation', owner: 'team-x', operations: ['getItem'] });
    r.consumers.unknown = 'allow';
    r.delegation = { mode: 'off' };
    r.revocation = { mode: 'enforce' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // Something revoked and something quarantined, so that both weigh actors.
  await (await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: JSON.stringify([SPIRE, 'spiffe://spire.example/z']), reason: 'x' }) })).text();
  for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: 'q@test.local', scope: '' })) })).text();
  const isses: unknown[] = [undefined, 42, null, {}, [], '', SPIRE, K, 'https://issuer.test.local', 'x', '__proto__', 'constructor'];
  const subs: unknown[] = ['spiffe://spire.example/a', 'SPIFFE://SPIRE.EXAMPLE/a', 'spiffe://u@spire.example:443/a', 'system:serviceaccount:a:b', 'SYSTEM:SERVICEACCOUNT:a:b', 'System:ServiceAccount:x:y', BOT, '__proto__', 'constructor', '', 7, null, ['a'], { sub: 'x' }, 'x'.repeat(5000)]; const LONG = 'y'.repeat(300);
  const statuses = new Map<number, number>();
  let n = 0;
  const strSubs = [...subs.filter((s) => typeof s === 'string' && s !== '' && s.length < 1000), LONG];
  for (let round = 0; round < 12; round++) {
    const complete = round >= 6;
    let act: any;
    for (let i = 0; i < (complete ? 40 : 70); i++) {
      const level: any = { sub: complete ? strSubs[(i * 7 + round * 3) % strSubs.length] : subs[(i * 7 + round * 3) % subs.length] };
      const iss = isses[(i * 5 + round) % isses.length];
      if (iss !== undefined) level.iss = iss;
      if (act !== undefined) level.act = act;
      act = !complete && (i + round) % 23 === 22 ? 'str' : level;
    }
    for (const path of ['/items/1', '/items']) {
      const res = await fetch(`${dg.url}${path}`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act } })) });
      await res.text();
      if (complete) t.comment(`complete chain ${path}: ${res.status}`);
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1); n++;
    }
  }
  t.comment(`${n} requests: ${JSON.stringify([...statuses])}`);
  t.notOk(statuses.has(500), 'no 500');
  const errors = dg.logs.filter((l) => l.level === 'error');
  t.same(errors, [], 'no error logged');
});
