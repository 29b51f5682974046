// Counting a driftguard's decision-log lines after a run. The log of a full run runs to
// hundreds of MB (more than the longest string V8 can hold, 512 MiB), so it is read in chunks.

import { openSync, readSync, closeSync, existsSync } from 'node:fs';

const CHUNK = 16 * 1024 * 1024;
const DECISION = Buffer.from('"decision"');

/** Lines in `file`, and those of them that are decision lines (they hold a "decision" field). */
export function countLogLines(file: string, chunkBytes = CHUNK): { lines: number; decisionLines: number } {
  if (!existsSync(file)) return { lines: 0, decisionLines: 0 };
  const fd = openSync(file, 'r');
  let lines = 0;
  let decisionLines = 0;
  // The unfinished line carried from one chunk to the next.
  let carry = Buffer.alloc(0);
  const line = (l: Buffer) => { if (l.length === 0) return; lines++; if (l.includes(DECISION)) decisionLines++; };
  try {
    const chunk = Buffer.allocUnsafe(chunkBytes);
    for (let n = readSync(fd, chunk); n > 0; n = readSync(fd, chunk)) {
      const data = carry.length ? Buffer.concat([carry, chunk.subarray(0, n)]) : chunk.subarray(0, n);
      let start = 0;
      for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) { line(data.subarray(start, nl)); start = nl + 1; }
      carry = Buffer.from(data.subarray(start));
    }
    line(carry);
  } finally { closeSync(fd); }
  return { lines, decisionLines };
}
