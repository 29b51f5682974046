// Maps method and canonical path to an operation of the contract. Unknown operations are
// denied: a stale automation calling a path the contract no longer has is the very case
// driftguard exists for. Literal segments win over variables at every level; the query
// string never takes part. Literals are matched exactly, but many upstream routers are not
// (Express by default, ASP.NET Core): a segment that a variable would take, and that differs
// from a literal beside it only in case, is refused, or `/items/EXPORT` would be decided as
// getItem(id=EXPORT) and run by the upstream as exportItems.

import type { Check } from '../pipeline/types.ts';
import type { Operation, Rules } from '../rules/types.ts';
import { parseTemplate } from '../rules/templates.ts';

interface Node {
  readonly literals: Map<string, Node>;
  /** Lower-cased literals, where a variable sits beside them. */
  folded?: Set<string>;
  variable?: Node;
  operation?: Operation;
}

/** The segment at `index` differs from a literal beside a variable only in case. */
export interface CaseMismatch { readonly caseOf: string; readonly index: number }

const node = (): Node => ({ literals: new Map() });

export function buildMatcher(operations: readonly Operation[]): (method: string, segments: readonly string[]) => Operation | CaseMismatch | undefined {
  const roots = new Map<string, Node>();
  for (const op of operations) {
    const template = parseTemplate(op.path);
    if (typeof template === 'string') throw new TypeError(`operation ${op.id}: ${template}`); // the loader already refused it
    let at = roots.get(op.method) ?? node();
    roots.set(op.method, at);
    for (const s of template.segments) {
      if ('literal' in s) {
        let next = at.literals.get(s.literal);
        if (!next) at.literals.set(s.literal, (next = node()));
        at = next;
      } else {
        at = at.variable ??= node();
      }
    }
    at.operation = op;
  }
  const fold = (at: Node): void => {
    if (at.variable && at.literals.size > 0) at.folded = new Set([...at.literals.keys()].map((l) => l.toLowerCase()));
    for (const next of at.literals.values()) fold(next);
    if (at.variable) fold(at.variable);
  };
  for (const root of roots.values()) fold(root);

  function walk(at: Node, segments: readonly string[], i: number): Operation | CaseMismatch | undefined {
    if (i === segments.length) return at.operation;
    const segment = segments[i]!;
    const literal = at.literals.get(segment);
    if (literal) {
      const found = walk(literal, segments, i + 1);
      if (found) return found;
    }
    if (!at.variable) return undefined;
    if (!literal && at.folded?.has(segment.toLowerCase())) return { caseOf: segment, index: i };
    return walk(at.variable, segments, i + 1);
  }

  return (method, segments) => {
    const root = roots.get(method);
    const found = root ? walk(root, segments, 0) : undefined;
    if (found || method !== 'HEAD') return found;
    // HEAD is a GET without a body: without an operation of its own it needs the GET's permission.
    const get = roots.get('GET');
    return get ? walk(get, segments, 0) : undefined;
  };
}

export function operationLookup(rules: Rules): Check {
  const match = buildMatcher(rules.contract.operations);
  return {
    name: 'operation',
    run(ctx) {
      const op = match(ctx.req.method ?? '', ctx.target!.segments);
      if (op && !('caseOf' in op)) { ctx.operation = op; return undefined; }
      const why = op ? `: path segment ${op.index + 1} differs from the contract's only in case, and paths are matched exactly` : '';
      return { reason: 'unknown-operation', detail: `${ctx.req.method} ${shortened(ctx.target!.path)} is not an operation of contract ${rules.contract.current}${why}` };
    },
  };
}

/**
 * The path as the detail quotes it. A request line may be close to 16 KiB, and the detail goes
 * into the problem, the span, the decision-log line and the recent-decisions ring: quoted
 * whole, anyone could make every one of those records 16 KiB with requests nobody may make.
 * The record's own path field is cut at 2 KiB. The cut is marked with ASCII dots: one
 * character outside Latin-1 (an ellipsis) makes V8 keep the whole line as a two-byte string
 * in the ring, twice its memory.
 */
const QUOTED_PATH = 200;
function shortened(path: string): string {
  return path.length > QUOTED_PATH ? `${path.slice(0, QUOTED_PATH)}...` : path;
}
