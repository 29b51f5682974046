// The operation matcher's work is bounded by the contract, not by the path: a last segment of
// thousands of dots cost one walk per dot, each over the stem (quadratic: 16 KiB took a
// quarter of a second of the one request thread, before any credential was checked). The
// work is counted (the lookups in the matcher's tables), not timed.

import t from 'tap';
import { buildMatcher } from '../../proxy/checks/operation.ts';
import type { Operation } from '../../proxy/rules/types.ts';

const op = (id: string, path: string): Operation => ({ id, method: 'GET', path, scopes: [], sensitivity: 'low', public: false } as Operation);
const getItem = op('getItem', '/items/{id}');
const exportItems = op('exportItems', '/items/export');
const long = op('longLiteral', `/items/${'x'.repeat(40)}`);

/** How many Map lookups `f` makes: each level of each walk is one or two. */
function lookups(f: () => unknown): { result: unknown; count: number } {
  const get = Map.prototype.get;
  let count = 0;
  Map.prototype.get = function (this: Map<unknown, unknown>, key: unknown) { count++; return get.call(this, key); };
  try { return { result: f(), count }; } finally { Map.prototype.get = get; }
}

t.test('a last segment of thousands of dots costs a bounded number of lookups, and is still getItem', async (t) => {
  const match = buildMatcher([getItem, exportItems, long]);
  const plain = lookups(() => match('GET', ['items', '1'])).count;
  for (const dotted of ['A.'.repeat(5_000) + 'A', 'a.'.repeat(5_000) + 'a', 'a.'.repeat(7_000)]) {
    const { result, count } = lookups(() => match('GET', ['items', dotted]));
    t.equal(result, getItem);
    // The stems that could equal a literal: up to 12 characters per character of the longest (40).
    t.ok(count <= plain * (1 + 12 * 40 / 2) * 2, `${count} lookups for ${dotted.length} characters (a plain id: ${plain}; before: several per dot)`);
  }
});

t.test('the suffix a router would read is still found, encoded and folded too, up to the longest literal', async (t) => {
  const match = buildMatcher([getItem, exportItems, long]);
  t.same(match('GET', ['items', 'export.json']), { by: 'suffix', index: 1 });
  t.same(match('GET', ['items', 'EXPORT.tar.gz']), { by: 'suffix', index: 1 });
  t.same(match('GET', ['items', `${'x'.repeat(40)}.json`]), { by: 'suffix', index: 1 }, 'a 40-character literal');
  // Each x written as %78: 120 characters that decode and fold to the literal.
  t.same(match('GET', ['items', `${'%78'.repeat(40)}.json`]), { by: 'suffix', index: 1 }, 'percent-encoded, three times its length');
  t.equal(match('GET', ['items', `${'x'.repeat(41)}.json`]), getItem, 'longer than any literal: the variable');
});
