// Revocation list entries refused one check at a time: an id used twice (the store keys
// revocations by source and id, so one of the two would be lost) and an empty reason.

import t from 'tap';
import { parseList } from '../../proxy/lifecycle/lists.ts';
import type { RulesProblem } from '../../proxy/rules/load.ts';
import { matchEach } from '../support/lists.ts';

const NOW = Date.parse('2026-11-26T00:00:00Z');

t.test('an id used twice is a problem at the second entry (one of the two revocations would be lost)', async (t) => {
  const text = JSON.stringify({ revocations: [
    { kind: 'jti', value: 'a', reason: 'r', id: 'INC-1' },
    { kind: 'subject', value: 'spiffe://x', reason: 'r', id: 'INC-1' },
  ] }, null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, 20_000) as RulesProblem[];
  t.ok(Array.isArray(problems) && problems.length === 1 && 'field' in problems[0]!, 'refused, not two revocations under one id');
  matchEach(t, problems, [{ field: 'revocations[1].id', message: /id "INC-1" is used twice/ }]);
});

t.test('an end or an id of the wrong type is a problem (String() read ["2099-01-01"] as the date, and every object as "[object Object]")', async (t) => {
  const problems = parseList(JSON.stringify({ revocations: [
    { kind: 'jti', value: 'a', reason: 'r', end: ['2099-01-01'] },
    { kind: 'jti', value: 'b', reason: 'r', id: { n: 1 } },
    { kind: 'jti', value: 'c', reason: 'r', id: 4711 },
  ] }), 'list.json', 'file', NOW, 20_000) as RulesProblem[];
  matchEach(t, problems, [
    { field: 'revocations[0].end', message: /^must be a string/ },
    { field: 'revocations[1].id', message: /^must be a non-empty string or a number/ },
  ]);
  const numbered = parseList(JSON.stringify({ revocations: [{ kind: 'jti', value: 'c', reason: 'r', id: 4711 }] }), 'list.json', 'file', NOW, 20_000);
  t.match(numbered, [{ id: '4711' }], 'an incident number written bare is its id');
});

t.test('an empty reason is a problem', async (t) => {
  const problems = parseList(JSON.stringify({ revocations: [{ kind: 'jti', value: 'a', reason: '' }] }), 'list.json', 'file', NOW, 20_000) as RulesProblem[];
  matchEach(t, problems, [{ field: 'revocations[0].reason', message: /must be a non-empty string/ }]);
});

t.test('a name written twice in one JSON object is a problem at the second (JSON.parse kept it and dropped the first)', async (t) => {
  const cases: [string, string, number, number][] = [
    // A second `revocations` emptied the list: every revocation silently lifted.
    ['a second list', '{"revocations": [{"kind": "task", "value": "t1", "reason": "r"}],\n "revocations": []}', 2, 2],
    // A second `value` revoked t2, not the t1 the operator also wrote.
    ['a second value', '[{"kind": "task", "value": "t1",\n  "value": "t2", "reason": "r"}]', 2, 3],
    // Spelled with an escape, still the same name.
    ['an escaped name', '[{"kind": "task", "value": "t1", "v\\u0061lue": "t2", "reason": "r"}]', 1, 34],
  ];
  for (const [what, text, line, column] of cases) {
    t.same(parseList(text, 'list.json', 'url', NOW, 20_000), [{ file: 'list.json', line, column, field: '', message: 'a name written twice in the same object: JSON.parse would keep the second and silently drop the first' }], what);
  }
  const fine = parseList('[{"kind": "task", "value": "t1", "reason": "a, \\"b\\" {c}"}, {"kind": "task", "value": "t2", "reason": "r"}]', 'list.json', 'url', NOW, 20_000);
  t.equal((fine as { kind: string }[]).length, 2, 'equal names in two objects, and commas and braces inside strings, are fine');
});

t.test('a YAML tag the parser does not define is a problem, not its literal text revoked', async (t) => {
  const problems = parseList('revocations:\n  - { kind: task, value: !env TASK, reason: r }\n', 'list.yaml', 'file', NOW, 20_000);
  matchEach(t, problems, [{ line: 2, field: '', message: /^YAML: Unresolved tag: !env: tags are not expanded; write the value itself$/ }]);
});
