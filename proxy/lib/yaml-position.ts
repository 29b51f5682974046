// Where a field stands in a YAML document, so that configuration errors name file, line and
// column (rules, injector configuration).

import { isMap, isSeq, type Document, type LineCounter, type Node } from 'yaml';

export interface Position {
  readonly line: number;
  readonly col: number;
  /** false when the path ends before its last part (the position is the deepest node found). */
  readonly found: boolean;
}

function sameKey(key: unknown, part: string | number): boolean {
  return key === part || ((typeof key === 'boolean' || typeof key === 'number' || typeof key === 'bigint') && String(key) === String(part));
}

/** Position of the node at `path`, or of the deepest node that exists along it (the key, where the path ends on one). */
export function positionOf(doc: Document, lines: LineCounter, path: readonly (string | number)[]): Position {
  let offset = 0;
  let node: unknown = doc.contents;
  let depth = 0;
  for (const part of path) {
    if (isMap(node)) {
      // A key YAML reads as another scalar (`true:`, `8080:`) is a string in the parsed object.
      const pair = node.items.find((item) => sameKey((item.key as { value?: unknown } | null)?.value, part));
      if (!pair) break;
      offset = (pair.key as Node).range?.[0] ?? offset;
      node = pair.value;
    } else if (isSeq(node) && typeof part === 'number' && node.items[part]) {
      node = node.items[part];
      offset = (node as Node).range?.[0] ?? offset;
    } else {
      break;
    }
    depth++;
  }
  const pos = lines.linePos(offset);
  return { line: pos.line, col: pos.col, found: depth === path.length };
}

/**
 * The path of the deepest node whose key or value spans `offset`: the field a YAML error
 * (a key written twice, say) stands in, for a message that names it.
 */
export function pathAt(doc: Document, offset: number): (string | number)[] {
  const path: (string | number)[] = [];
  let node: unknown = doc.contents;
  const spans = (n: unknown) => { const r = (n as Node | null)?.range; return r != null && r[0] <= offset && offset < r[1]; };
  for (;;) {
    if (isMap(node)) {
      const pair = node.items.find((p) => spans(p.key) || spans(p.value));
      const key = (pair?.key as { value?: unknown } | null | undefined)?.value;
      if (!pair || (typeof key !== 'string' && typeof key !== 'number')) return path;
      path.push(key);
      if (spans(pair.key)) return path;
      node = pair.value;
    } else if (isSeq(node)) {
      const i = node.items.findIndex(spans);
      if (i === -1) return path;
      path.push(i);
      node = node.items[i];
    } else {
      return path;
    }
  }
}
