// What a value holds on the V8 heap, estimated from above, for the tables that are bounded by
// memory rather than by count. V8 keeps a string at one byte per character only while every
// character fits in Latin-1; one character beyond makes the whole string two bytes per
// character. Counting UTF-8 bytes instead undercounts such a string by nearly half (an
// ASCII subject with one 'Ж' in it), and counting characters by half.

/** Bytes of a string's characters on the heap: length, or twice it unless it is all ASCII. */
export function stringBytes(s: string): number {
  return heldBytes(s.length, Buffer.byteLength(s, 'utf8'));
}

/**
 * The same from a string's length and its UTF-8 length, where the caller has both: the UTF-8
 * length equals the length only for ASCII. Latin-1 beyond ASCII is counted as two-byte: an
 * overestimate, never an under.
 */
export function heldBytes(length: number, utf8: number): number {
  return utf8 === length ? length : 2 * length;
}

/** Header of a string, a heap number or a small object; a slot of an object or array. */
const HEADER = 24;
const SLOT = 16;

/**
 * Heap held by a parsed JSON value (a token's claims): its strings, a header for every
 * object, array and string, slots for every member. Measured with --expose-gc for tokens of
 * about 4 KB: 980 empty arrays held 40 KB (ten times the text), 480 empty objects 32 KB, 400
 * keys 26 KB, one long string 4 KB, 1,300 arrays nested in one another 73 KB; the estimate is
 * within 1% of each or above it (numbers in an array are counted as if boxed: 3.5 times what
 * they hold).
 */
export function jsonBytes(value: unknown): number {
  let bytes = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string') bytes += HEADER + stringBytes(v);
    // An array is an object and, when not empty, a separate store of its slots.
    else if (Array.isArray(v)) { bytes += (v.length ? 2 : 1) * HEADER + SLOT * v.length; for (const x of v) stack.push(x); }
    else if (v !== null && typeof v === 'object') {
      // A member costs three slots (an object of many is a hash table, half empty) and its name.
      for (const [k, x] of Object.entries(v)) { bytes += 3 * SLOT + HEADER + stringBytes(k); stack.push(x); }
      bytes += 2 * HEADER;
    } else bytes += SLOT;
  }
  return bytes;
}

/** How full a bounded table is: its entries, and the share of its bound in use (0 to 1). */
export interface TableFill {
  readonly entries: number;
  readonly fill: number;
}

/** An lru-cache's fill: by count, or by weight where it has a maxSize, whichever is fuller. */
export function lruFill(c: { readonly size: number; readonly max: number; readonly maxSize: number; readonly calculatedSize: number }): TableFill {
  return { entries: c.size, fill: Math.max(c.max ? c.size / c.max : 0, c.maxSize ? c.calculatedSize / c.maxSize : 0) };
}
