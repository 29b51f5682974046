// tap's t.match with an array pattern checks only the pattern's indexes: `t.match([a, b], [a])`
// and `t.match([a], [])` pass. Where a list is meant to be exactly these entries ("one warning",
// "the only problem"), its length is asserted too.

import type { Test } from 'tap';

/** `found` has as many entries as `pattern`, and each matches its pattern (t.match). */
export function matchEach(t: Test, found: readonly unknown[], pattern: readonly unknown[], message?: string): void {
  t.equal(found.length, pattern.length, `${message ?? 'the list'}: ${pattern.length} ${pattern.length === 1 ? 'entry' : 'entries'}`);
  t.match(found, pattern, message ?? 'each entry');
}
