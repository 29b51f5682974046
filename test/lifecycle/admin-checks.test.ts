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
  t.match(over.text, /the revocations in force take 3 of revocation\.maxEntries \(3\), and this one 1/);
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: unknown[] };
  t.equal(listed.revocations.length, 3, 'three held');
});

t.test('an admin revocation takes a unit of revocation.maxEntries per KiB it holds: large ones cannot fill the heap by count', async (t) => {
  // Counted by entries alone, 8,000 writes of 4 KiB Cyrillic values (12 KiB of heap each) ran
  // the chart's heap out, under the 20,000 allowed.
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { maxEntries: 30 }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const post = async (value: string, reason = 'test') => {
    const r = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value, reason }) });
    return { status: r.status, text: await r.text() };
  };
  // 4,096 characters beyond Latin-1 and a 1,024-character reason: about 12 KiB of heap, 14 units.
  t.equal((await post('ж'.repeat(4095) + '1', 'ж'.repeat(1024))).status, 201, 'the first large one');
  t.equal((await post('ж'.repeat(4095) + '2', 'ж'.repeat(1024))).status, 201, 'the second');
  const third = await post('ж'.repeat(4095) + '3', 'ж'.repeat(1024));
  t.equal(third.status, 507, 'the third would pass 30 units');
  t.match(third.text, /the revocations in force take 28 of revocation\.maxEntries \(30\), and this one 14/);
  for (let i = 0; i < 2; i++) t.equal((await post(`small-${i}`)).status, 201, `a usual one takes one unit (${i + 1})`);
  t.equal((await post('small-3')).status, 507, 'and the bound holds for them too');
  t.match(dg.dg.tables.get('revocations')?.(), { entries: 4, fill: 1 }, 'four revocations fill the table: it reports itself full by units');
});

t.test('unitsOf: a usual admin revocation takes one unit; a pair-valued one is weighed with the copy its index holds; a list entry one', async (t) => {
  const { unitsOf } = await import('../../proxy/lifecycle/revocations.ts');
  const r = (value: string, o: Record<string, unknown> = {}) => ({ id: '5f0c6e7a-0d4b-4d2e-9c55-1a2b3c4d5e6f', kind: 'subject' as const, value, reason: 'leaked in ticket OPS-4711', endMs: 1, createdMs: 0, source: 'admin' as const, by: 'ops', ...o });
  t.equal(unitsOf(r('spiffe://example.org/ns/billing/sa/invoice-agent')), 1, 'a usual one');
  const plain = unitsOf(r('ж'.repeat(4096)));
  const pair = unitsOf(r(JSON.stringify(['https://issuer.example', 'ж'.repeat(4090)])));
  t.ok(plain >= 10, `4,096 characters beyond Latin-1: ${plain} units (8 KiB of text)`);
  t.ok(pair >= plain + 9, `the same as an issuer pair, indexed as a second copy: ${pair} units`);
  t.equal(unitsOf(r('ж'.repeat(4096), { source: 'file' })), 1, 'a list\'s entry: one');
});
