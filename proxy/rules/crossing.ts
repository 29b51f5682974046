// Path templates that cross: two operations' templates that match one request where neither
// is the more specific. The loader refuses such a pair (load.ts, build).

import { verbOf, type Segment, type Template } from './templates.ts';

/**
 * Refuse two templates that match one request where neither is the more specific: at some
 * place one has a literal and the other a variable, and at another the reverse
 * (`/items/{id}` and `/{collection}/export`, both of `/items/export`). driftguard decides such
 * a request by the first literal from the left (getItem); Spring and JAX-RS rank by literal
 * characters, and Express and Django by the order the app declared them (exportAll): the
 * upstream may run the operation whose scopes, sensitivity and contract driftguard did not
 * judge. Go's ServeMux refuses such a pair at registration; so does the loader. Where one is
 * a literal wherever the other is (`/items/export` and `/items/{id}`), every router runs the
 * more specific one, as driftguard decides. A HEAD request is decided among HEAD and GET
 * operations together (checks/operation.ts), so those two methods are weighed together too.
 */
export function crossingTemplates(operations: readonly { method: string; path: string }[], templates: readonly (Template | undefined)[], fail: (path: (string | number)[], message: string) => void): void {
  // One trie of templates per method tree, walked for each new template along the children
  // that can take its segments: only templates that overlap it are met (every pair compared
  // took seconds of the request thread at a reload of 5,000 operations).
  const trees = new Map<string, CrossNode>();
  operations.forEach((op, i) => {
    const template = templates[i];
    if (template === undefined) return;
    for (const tree of op.method === 'GET' ? ['GET', 'HEAD'] : [op.method]) {
      const root = trees.get(tree) ?? crossNode();
      trees.set(tree, root);
      // Both GET: met in the GET tree already.
      const skip = tree === 'HEAD' && op.method === 'GET' ? (j: number) => operations[j]!.method === 'GET' : () => false;
      const found = crossingIn(root, template.segments, 0, false, false, [], skip);
      if (found) {
        const them = operations[found.other]!;
        fail(['contract', 'operations', i, 'path'], `${op.method} ${op.path} and contract.operations[${found.other}] (${them.method} ${them.path}) both match ${them.method !== op.method ? `${tree} ` : ''}${found.example}, and neither is the more specific: upstream routers rank such routes differently (Spring and JAX-RS by their literals, Express and Django by the order they were declared), so the upstream may run the other operation; give one a literal wherever the other has one`);
        return;
      }
      let at = root;
      for (const segment of template.segments) {
        const [children, key] = 'literal' in segment ? [at.literals, segment.literal] : [at.variables, segment.verb ?? ''];
        let next = children.get(key);
        if (!next) children.set(key, (next = { ...crossNode(), segment }));
        at = next;
      }
      at.operations.push(i);
    }
  });
}

interface CrossNode {
  /** Literal segments by their text. */
  readonly literals: Map<string, CrossChild>;
  /** Variables by their custom method ('' for a plain one). */
  readonly variables: Map<string, CrossChild>;
  /** The operations whose template ends here. */
  readonly operations: number[];
}
type CrossChild = CrossNode & { readonly segment: Segment };
const crossNode = (): CrossNode => ({ literals: new Map(), variables: new Map(), operations: [] });

/** Of two segments, the one that matches fewer: a literal, then a variable with a custom method (`{id}:cancel`), then a plain one. */
const specificity = (s: Segment): number => ('literal' in s ? 0 : s.verb !== undefined ? 1 : 2);

/**
 * A template under `at` that `segments` (from `k` on) crosses: both match one request, each
 * more specific at some place (`newer`: the new template's, `older`: the other's so far).
 */
function crossingIn(at: CrossNode, segments: readonly Segment[], k: number, newer: boolean, older: boolean, example: string[], skip: (i: number) => boolean): { other: number; example: string } | undefined {
  if (k === segments.length) {
    const other = newer && older ? at.operations.find((j) => !skip(j)) : undefined;
    return other === undefined ? undefined : { other, example: '/' + example.join('/') };
  }
  const x = segments[k]!;
  const rx = specificity(x);
  // A literal meets only its own literal among the literals: looked up, not walked.
  const candidates = 'literal' in x
    ? [at.literals.get(x.literal), ...at.variables.values()]
    : [...at.literals.values(), ...at.variables.values()];
  for (const child of candidates) {
    if (!child) continue;
    const ry = specificity(child.segment);
    const taken = takes(rx <= ry ? child.segment : x, rx <= ry ? x : child.segment);
    if (taken === undefined) continue;
    example.push(taken);
    const found = crossingIn(child, segments, k + 1, newer || rx < ry, older || ry < rx, example, skip);
    example.pop();
    if (found) return found;
  }
  return undefined;
}

/**
 * A segment both match, `wide` matching at least as many as `narrow` (specificity); else
 * undefined. A variable takes no empty segment (a trailing slash), and one with a custom method
 * only a segment that ends in it.
 */
function takes(wide: Segment, narrow: Segment): string | undefined {
  if ('literal' in narrow) {
    if ('literal' in wide) return wide.literal === narrow.literal ? narrow.literal : undefined;
    if (narrow.literal === '') return undefined;
    if (wide.verb === undefined) return narrow.literal;
    return verbOf(narrow.literal) === wide.verb ? narrow.literal : undefined;
  }
  if ('literal' in wide) return undefined;
  if (narrow.verb !== undefined) return wide.verb === undefined || wide.verb === narrow.verb ? `x:${narrow.verb}` : undefined;
  return 'x';
}
