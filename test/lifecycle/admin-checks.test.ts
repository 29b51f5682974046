// POST /revocations refuses each mistake on its own, with what is wrong (an end in the past,
// a year mistyped, was a 201 for a revocation already over), and holds no more than
// revocation.maxEntries (507 past it): the memory bound the README promises for admin writes.

import t from 'tap';
import { world, startLifecycle } from './support.ts';

t.test('each mistake alone is refused with what is wrong', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const post = async (body: Record<string, unknown>) => {
    const r = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, text: await r.text() };
  };
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['an empty value', { kind: 'jti', value: '', reason: 'y' }, /value must be a non-empty string/],
    ['an end in the past (a typo in the year)', { kind: 'subject', value: 'spiffe://x', reason: 'y', end: '2000-01-01T00:00:00Z' }, /end must be in the future/],
    ['an empty reason', { kind: 'jti', value: 'x', reason: '' }, /reason must be a non-empty string/],
    ['a reason past 1024 characters', { kind: 'jti', value: 'x', reason: 'r'.repeat(1025) }, /reason must be a non-empty string/],
    // String() read the date inside a list as the end.
    ['an end in a list', { kind: 'jti', value: 'x', reason: 'y', end: ['2099-01-01'] }, /end must be a string/],
    ['an end as a number', { kind: 'jti', value: 'x', reason: 'y', end: 4102444800000 }, /end must be a string/],
  ];
  for (const [what, body, said] of cases) {
    const r = await post(body);
    t.equal(r.status, 400, `${what}: 400 (got ${r.status})`);
    t.match(r.text, said, what);
  }
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: unknown[] };
  t.same(listed.revocations, [], 'nothing was recorded as revoked');
});

t.test('an admin revocation past revocation.maxEntries is 507, and not held', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { maxEntries: 3 }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const post = async (value: string) => {
    const r = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'jti', value, reason: 'test' }) });
    return { status: r.status, text: await r.text() };
  };
  for (const v of ['a', 'b', 'c']) t.equal((await post(v)).status, 201, `${v}: within the bound`);
  const over = await post('d');
  t.equal(over.status, 507, 'the fourth is refused');
  t.match(over.text, /already 3 revocations \(revocation\.maxEntries\)/);
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: unknown[] };
  t.equal(listed.revocations.length, 3, 'three held');
});
