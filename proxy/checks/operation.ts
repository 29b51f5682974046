// Maps method and canonical path to an operation of the contract. Unknown operations are
// denied: a stale automation calling a path the contract no longer has is the very case
// driftguard exists for. Literal segments win over variables at every level; the query
// string never takes part. Literals are matched exactly, but many upstream routers are not
// (Express by default, ASP.NET Core): a request that such a router would route to another
// operation, comparing literals without case, is refused, or `/items/EXPORT` would be
// decided as getItem(id=EXPORT) and run by the upstream as exportItems, and `/admin/ITEMS`
// as tenantCollection (/{tenant}/{collection}) and run as adminItems. Routers that read a
// format suffix (Rails' `(.:format)`, Django REST framework's suffix patterns, Spring before
// 5.3) take `/items/export.json` to exportItems too: refused the same way.

import type { Check } from '../pipeline/types.ts';
import type { Operation, Rules } from '../rules/types.ts';
import { foldSegment, parseTemplate, verbOf } from '../rules/templates.ts';
import { redactPath } from '../lib/redact.ts';

interface Node {
  readonly literals: Map<string, Node>;
  /**
   * The literals by their fold (decoded, case-folded): what a router that decodes or ignores
   * case compares. Every literal of a fold, not the first: `A:B` and `a:b` both fold to `a:b`,
   * and a walk that followed only the first missed the second's subtree.
   */
  readonly folded: Map<string, Node[]>;
  variable?: Node;
  /** Variables that end the path with a custom method (`{id}:cancel`), by the method. */
  verbs?: Map<string, Node>;
  /** The same by the method's fold: a router that ignores case runs `{id}:cancel` for `1:CANCEL`. */
  foldedVerbs?: Map<string, Node[]>;
  operation?: Operation;
}

/**
 * The segment at `index` would take another router to another operation: one that ignores
 * case (`case`), or one that reads a format suffix from the last segment's first dot on (`suffix`).
 */
export interface Mismatch { readonly by: 'case' | 'suffix' | 'slash' | 'verb'; readonly index: number }

const node = (): Node => ({ literals: new Map(), folded: new Map() });

/** Custom methods a last segment may name before a format suffix and still be walked (decide). */
const MAX_VERB_STEMS = 8;

/** The same path with a trailing slash if it has none, without it if it has one. */
function slashTwin(segments: readonly string[]): readonly string[] {
  return segments.at(-1) === '' ? segments.slice(0, -1) : [...segments, ''];
}

/** A segment whose fold may differ from itself: an ASCII capital, or an encoded character. */
const MAY_FOLD = /[A-Z%]/;

/**
 * The most characters a segment may have per character of its fold: a code point written as
 * four percent-encoded UTF-8 bytes (12) that folds to one (the Kelvin sign, nine, to `k`).
 */
const ENCODED_PER_FOLDED = 12;

export function buildMatcher(operations: readonly Operation[]): (method: string, segments: readonly string[]) => Operation | Mismatch | undefined {
  const roots = new Map<string, Node>();
  /** The longest literal segment, as written or folded: a longer stem can equal none of them. */
  let longestLiteral = 0;
  /** Some literal folds to something else (/v1/Items): any request may then fold onto one. */
  let foldingLiterals = false;
  /**
   * The folds of one match's segments, each folded once: the suffix check walks a path once
   * per dot, and folding every segment again each time made a long dotted path cost
   * milliseconds of the one thread (before any credential was looked at). Made on the first
   * fold a match needs, dropped as it ends.
   */
  let folds: Map<string, string> | undefined;
  const foldOf = (segment: string): string => {
    folds ??= new Map();
    let f = folds.get(segment);
    if (f === undefined) { f = foldSegment(segment); folds.set(segment, f); }
    return f;
  };
  /** Operations whose last segment is a variable: a value with a dot may be a format suffix. */
  const endsInVariable = new Set<Operation>();
  /** Some template ends in a slash: a router that ignores one may take a path to its twin. */
  let trailingSlashes = false;
  /** The custom methods the contract declares, by method tree (AIP-136). */
  const declaredVerbs = new Map<string, Set<string>>();
  /** The same, folded (foldSegment): a format suffix after one is looked for by them (decide). */
  const foldedDeclaredVerbs = new Map<string, Set<string>>();
  /** The longest of them, folded. */
  let longestVerb = 0;
  const insert = (method: string, op: Operation): void => {
    const template = parseTemplate(op.path);
    if (typeof template === 'string') throw new TypeError(`operation ${op.id}: ${template}`); // the loader already refused it
    let at = roots.get(method) ?? node();
    roots.set(method, at);
    for (const s of template.segments) {
      if ('literal' in s) {
        let next = at.literals.get(s.literal);
        if (!next) {
          at.literals.set(s.literal, (next = node()));
          const folded = foldSegment(s.literal);
          const same = at.folded.get(folded);
          if (same) same.push(next); else at.folded.set(folded, [next]);
          longestLiteral = Math.max(longestLiteral, s.literal.length, folded.length);
          if (folded !== s.literal) foldingLiterals = true;
        }
        at = next;
      } else if (s.verb !== undefined) {
        const foldedVerb = foldSegment(s.verb);
        const verbs = at.verbs ??= new Map();
        let next = verbs.get(s.verb);
        if (!next) {
          verbs.set(s.verb, (next = node()));
          const same = (at.foldedVerbs ??= new Map()).get(foldedVerb);
          if (same) same.push(next); else at.foldedVerbs.set(foldedVerb, [next]);
          if (foldedVerb !== s.verb) foldingLiterals = true;
        }
        declaredVerbs.set(method, (declaredVerbs.get(method) ?? new Set()).add(s.verb));
        foldedDeclaredVerbs.set(method, (foldedDeclaredVerbs.get(method) ?? new Set()).add(foldedVerb));
        longestVerb = Math.max(longestVerb, foldedVerb.length);
        at = next;
      } else {
        at = at.variable ??= node();
      }
    }
    // HEAD's tree takes the GET operations too, where no HEAD operation has the template.
    if (at.operation !== undefined) return;
    at.operation = op;
    const lastSegment = template.segments.at(-1);
    const slashed = lastSegment !== undefined && 'literal' in lastSegment && lastSegment.literal === '';
    if (slashed) trailingSlashes = true;
    // Its last segment before any trailing slash (/users/{pk}/: Django REST framework's suffix
    // patterns read /users/export.json/ too).
    const named = slashed ? template.segments.at(-2) : lastSegment;
    if (named !== undefined && !('literal' in named) && named.verb === undefined) endsInVariable.add(op);
  };
  for (const op of operations) insert(op.method, op);
  // HEAD is a GET without a body, and routers pick its handler by path among both (Spring's
  // best match, Django's and Rails' path-first routing, a GET route serving HEAD): with
  // HEAD /items/{id} and GET /items/export, HEAD /items/export runs the export. One tree of
  // both, a HEAD operation first where both have the template, walked as any other: the most
  // specific path wins, and the suffix, slash and case checks weigh both methods' templates.
  if (roots.has('HEAD')) for (const op of operations) if (op.method === 'GET') insert('HEAD', op);
  /** Exact: literals before variables at every level, backtracking to the variable. */
  function walk(at: Node, segments: readonly string[], i: number): Operation | undefined {
    if (i === segments.length) return at.operation;
    const literal = at.literals.get(segments[i]!);
    if (literal) {
      const found = walk(literal, segments, i + 1);
      if (found) return found;
    }
    const custom = customMethod(at, segments, i);
    if (custom) return custom;
    // A variable takes no empty segment: /items/ is not /items/{id} with an empty id.
    return at.variable && segments[i] !== '' ? walk(at.variable, segments, i + 1) : undefined;
  }

  /** After the literals, before the variable: a last segment that ends in a custom method declared here (`1:cancel`). */
  function customMethod(at: Node, segments: readonly string[], i: number): Operation | undefined {
    if (at.verbs === undefined || i !== segments.length - 1) return undefined;
    const verb = verbOf(segments[i]!);
    return verb === undefined ? undefined : at.verbs.get(verb)?.operation;
  }

  /**
   * As a case-ignoring router walks: the same order, literals compared by their fold. Also
   * says the first segment that reached a literal only by folding (-1: none did).
   */
  function walkFolded(at: Node, segments: readonly string[], i: number, first: number): { op: Operation; index: number } | undefined {
    if (i === segments.length) return at.operation ? { op: at.operation, index: first } : undefined;
    const segment = segments[i]!;
    const exact = at.literals.get(segment);
    if (exact) {
      const found = walkFolded(exact, segments, i + 1, first);
      if (found) return found;
    }
    for (const literal of at.folded.get(foldOf(segment)) ?? []) {
      if (literal === exact) continue;
      const found = walkFolded(literal, segments, i + 1, first >= 0 ? first : i);
      if (found) return found;
    }
    const custom = customMethod(at, segments, i);
    if (custom) return { op: custom, index: first };
    // A custom method by its fold (`1:CANCEL`, `1%3Acancel` decoded): the segment reached it only so.
    const verb = at.foldedVerbs !== undefined && i === segments.length - 1 ? verbOf(foldOf(segment)) : undefined;
    for (const method of (verb !== undefined && at.foldedVerbs!.get(verb)) || []) {
      if (method.operation !== undefined && method.operation !== custom) return { op: method.operation, index: first >= 0 ? first : i };
    }
    return at.variable && segment !== '' ? walkFolded(at.variable, segments, i + 1, first) : undefined;
  }

  function decideCase(root: Node, segments: readonly string[]): Operation | Mismatch | undefined {
    const found = walk(root, segments, 0);
    // Most paths have no capital and no encoded character: nothing to fold, one walk.
    if (!foldingLiterals && !segments.some((s) => MAY_FOLD.test(s))) return found;
    const folded = walkFolded(root, segments, 0, -1);
    if (folded && folded.op !== found && folded.index >= 0) return { by: 'case', index: folded.index };
    return found;
  }

  /**
   * With a template that ends in a slash in the contract, a router that ignores trailing
   * slashes (Express's default, Spring before 6) may take /items/ to /items's operation, or
   * /items to /items/'s: a path whose twin, with or without the slash, is another operation's
   * is refused.
   */
  function decideSlash(root: Node, segments: readonly string[]): Operation | Mismatch | undefined {
    const found = decideCase(root, segments);
    if (!trailingSlashes || found === undefined || 'by' in found || segments.length === 0) return found;
    const twin = decideCase(root, slashTwin(segments));
    if (twin !== undefined && twin !== found) return { by: 'slash', index: segments.length - (segments.at(-1) === '' ? 2 : 1) };
    return found;
  }

  function decide(root: Node, segments: readonly string[], method: string): Operation | Mismatch | undefined {
    const found = decideSlash(root, segments);
    // A plain variable took a last segment that ends in a custom method the contract declares
    // elsewhere (`/orders/1:export` for GET /orders/{id}, with GET /carts/{id}:export): a
    // gateway that routes custom methods (grpc-gateway, AIP-136) runs the method, not this
    // operation. Decoded too, as such a gateway may read `%3A`.
    const verbs = declaredVerbs.get(method);
    if (verbs !== undefined && found !== undefined && !('by' in found) && endsInVariable.has(found) && segments.length > 0) {
      // Case as written: such gateways compare the method exactly.
      const verb = verbOf(segments.at(-1)!, true);
      if (verb !== undefined && verbs.has(verb)) return { by: 'verb', index: segments.length - 1 };
    }
    const slashed = segments.at(-1) === '';
    // The segment a suffix router reads the format from: the last, or the one before a trailing slash.
    const last = segments.length - (slashed ? 2 : 1);
    if (found === undefined || 'by' in found || last < 0 || !endsInVariable.has(found) || !segments[last]!.includes('.')) return found;
    // A variable took the last segment, dot and all. Without its suffix, from each dot on
    // (Rails and Django take the stem up to the first dot, Spring's suffix patterns any stem),
    // it may be another operation's, or fold onto one: where such a router goes. Only a stem
    // that can equal a literal (written or folded) can go elsewhere: a longer one takes the
    // variable the whole segment took. Without that bound, a segment of thousands of dots cost
    // a walk per dot, each over the stem: a quarter of a second of the one thread for 16 KiB.
    const segment = segments[last]!;
    /** The path with `stem` for the segment would be another operation's, or its slash twin would. */
    const elsewhere = (stem: string): boolean => {
      const stemmed = [...segments.slice(0, last), stem];
      const path = slashed ? [...stemmed, ''] : stemmed;
      const other = decideCase(root, path);
      if (other !== undefined && other !== found) return true;
      // Suffix routers that take the slash after the format as optional (Django REST
      // framework's `\.(?P<format>…)/?$`), or ignore it (Rails): the stem's twin too.
      if (!trailingSlashes) return false;
      const twin = decideCase(root, slashTwin(path));
      return twin !== undefined && twin !== found;
    };
    const longestStem = ENCODED_PER_FOLDED * longestLiteral;
    for (let dot = segment.indexOf('.'); dot > 0 && dot <= longestStem; dot = segment.indexOf('.', dot + 1)) {
      if (elsewhere(segment.slice(0, dot))) return { by: 'suffix', index: last };
    }
    // A custom method before the suffix (`<id>:export.json`, Spring's suffix patterns run
    // `{id}:export` for it): its stem is as long as its id, past the bound above. Looked for in
    // one pass over the colons after some id, each followed by a declared method and a dot;
    // each method met walked once, and a segment that names more than MAX_VERB_STEMS of them
    // refused: no id does, and a walk each cost milliseconds with hundreds declared.
    const folded = foldedDeclaredVerbs.get(method);
    if (folded !== undefined) {
      const text = foldOf(segment);
      const met = new Set<string>();
      for (let colon = text.indexOf(':', 1); colon !== -1; colon = text.indexOf(':', colon + 1)) {
        // Within a method's length of the colon: a search to the end from each colon was
        // quadratic in a segment of colons.
        const window = text.slice(colon + 1, colon + 2 + longestVerb);
        const end = window.indexOf('.');
        if (end <= 0) continue;
        const verb = window.slice(0, end);
        const dot = colon + 1 + end;
        if (!folded.has(verb) || met.has(verb)) continue;
        if (met.size === MAX_VERB_STEMS) return { by: 'suffix', index: last };
        met.add(verb);
        if (elsewhere(text.slice(0, dot))) return { by: 'suffix', index: last };
      }
    }
    return found;
  }

  return (method, segments) => {
    try { return match(method, segments); } finally { folds = undefined; }
  };

  function match(method: string, segments: readonly string[]): Operation | Mismatch | undefined {
    // Without HEAD operations, HEAD's tree is GET's: it needs the GET's permission.
    const root = roots.get(method) ?? (method === 'HEAD' ? roots.get('GET') : undefined);
    return root ? decide(root, segments, roots.has(method) ? method : 'GET') : undefined;
  }
}

export function operationLookup(rules: Rules): Check {
  const match = buildMatcher(rules.contract.operations);
  return {
    name: 'operation',
    run(ctx) {
      const op = match(ctx.req.method ?? '', ctx.target!.segments);
      if (op && !('by' in op)) { ctx.operation = op; return undefined; }
      const segments = ctx.target!.segments;
      // A trailing slash is part of the path: say so when the path without it is an operation.
      const unslashed = op === undefined && segments.at(-1) === '' ? match(ctx.req.method ?? '', segments.slice(0, -1)) : undefined;
      const why = op === undefined ? (unslashed && !('by' in unslashed) ? ': the contract names it without the trailing / (paths are matched with theirs)' : '')
        : op.by === 'case' ? `: path segment ${op.index + 1} differs from the contract's only in case or percent-encoding, and paths are matched exactly`
        : op.by === 'suffix' ? `: path segment ${op.index + 1} is another operation's with a format suffix (.json), which some routers take to that operation`
        : op.by === 'verb' ? `: path segment ${op.index + 1} ends in a custom method the contract declares for another path, which a gateway that routes custom methods would run`
        : ': it differs from another operation\'s path only by a trailing /, which some routers ignore';
      return { reason: 'unknown-operation', detail: `${ctx.req.method} ${shortened(ctx.target!.path)} is not an operation of contract version ${rules.contract.current}${why}` };
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
function shortened(target: string): string {
  const path = redactPath(target);
  return path.length > QUOTED_PATH ? `${path.slice(0, QUOTED_PATH)}...` : path;
}
