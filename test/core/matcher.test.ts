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
    // Three per stem level: the exact walk's, the folded walk's and the fold cache's.
    t.ok(count <= plain * (1 + 12 * 40 / 2) * 3, `${count} lookups for ${dotted.length} characters (a plain id: ${plain}; before: several per dot)`);
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

t.test('a long dotted path folds each of its segments once, however many stems the suffix check tries', async (t) => {
  // A capital makes every segment fold; a trailing-slash template makes each stem walk twice.
  const ops = [op('tenantItem', '/t/{tenant}/items/{id}'), op('exportSlashed', '/t/x/items/export/'), op('longLiteral', `/t/x/${'y'.repeat(33)}`)];
  const match = buildMatcher(ops);
  const dots = 'a.'.repeat(300) + 'a';
  const upper = String.prototype.toUpperCase;
  let folds = 0;
  String.prototype.toUpperCase = function (this: string) { folds++; return upper.call(this); };
  let result: unknown;
  try { result = match('GET', ['t', 'A'.repeat(8000), 'items', dots]); } finally { String.prototype.toUpperCase = upper; }
  t.equal((result as Operation).id, 'tenantItem');
  // The stems that could equal a literal: up to 12 characters per character of the longest (33).
  const stems = Math.ceil((12 * 33) / 2);
  t.ok(folds <= 4 + stems + 10, `${folds} folds for ${stems} stems and 4 segments (folding every segment again per stem and twin: about ${4 * 2 * stems})`);
});

t.test('every literal of one fold is walked: the one registered second is found too', async (t) => {
  // The loader refuses two literals of one fold at one place; the matcher does not rely on it.
  const anyX = op('anyX', '/r/{t}/x');
  const match = buildMatcher([anyX, op('upperY', '/r/A:B/y'), op('pairX', '/r/a:b/x')]);
  t.match(match('GET', ['r', 'a%3Ab', 'x']), { by: 'case', index: 1 }, '/r/a%3Ab/x decodes onto pairX: refused, not anyX');
  t.equal(match('GET', ['r', 'zz', 'x']), anyX);
});
