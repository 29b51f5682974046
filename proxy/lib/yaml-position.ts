// Where a field stands in a YAML document, so that configuration errors name file, line and
// column (rules, injector configuration).

import { isMap, isSeq, type Document, type LineCounter, type Node } from 'yaml';

export interface Position {
  readonly line: number;
  readonly col: number;
  /** false when the path ends before its last part (the position is the deepest node found). */
  readonly found: boolean;
}

/** Position of the node at `path`, or of the deepest node that exists along it (the key, where the path ends on one). */
export function positionOf(doc: Document, lines: LineCounter, path: readonly (string | number)[]): Position {
  let offset = 0;
  let node: unknown = doc.contents;
  let depth = 0;
  for (const part of path) {
    if (isMap(node)) {
      const pair = node.items.find((item) => (item.key as { value?: unknown } | null)?.value === part);
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
