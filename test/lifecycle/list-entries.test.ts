// Revocation list entries refused one check at a time: an id used twice (the store keys
// revocations by source and id, so one of the two would be lost) and an empty reason.

import t from 'tap';
import { parseList } from '../../proxy/lifecycle/lists.ts';
import type { RulesProblem } from '../../proxy/rules/load.ts';

const NOW = Date.parse('2026-11-26T00:00:00Z');

t.test('an id used twice is a problem at the second entry (one of the two revocations would be lost)', async (t) => {
  const text = JSON.stringify({ revocations: [
    { kind: 'jti', value: 'a', reason: 'r', id: 'INC-1' },
    { kind: 'subject', value: 'spiffe://x', reason: 'r', id: 'INC-1' },
  ] }, null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, 20_000) as RulesProblem[];
  t.ok(Array.isArray(problems) && problems.length === 1 && 'field' in problems[0]!, 'refused, not two revocations under one id');
  t.match(problems, [{ field: 'revocations[1].id', message: /id "INC-1" is used twice/ }]);
});

t.test('an empty reason is a problem', async (t) => {
  const problems = parseList(JSON.stringify({ revocations: [{ kind: 'jti', value: 'a', reason: '' }] }), 'list.json', 'file', NOW, 20_000) as RulesProblem[];
  t.match(problems, [{ field: 'revocations[0].reason', message: /must be a non-empty string/ }]);
});
