// Revocation list documents: a JSON list is read with JSON.parse and a YAML one as a document;
// both must give the same revocations, and problems in either must name line and field.

import t from 'tap';
import { parseList } from '../../proxy/lifecycle/lists.ts';
import type { RulesProblem } from '../../proxy/rules/load.ts';

const NOW = Date.parse('2026-11-26T00:00:00Z');

t.test('the same list as JSON and as YAML gives the same revocations', async (t) => {
  const json = JSON.stringify({ revocations: [
    { kind: 'task', value: 'ticket-4711', reason: 'task finished', end: '2026-12-01T00:00:00Z' },
    { kind: 'kid', value: 'key-2026-10', reason: 'key leaked', id: 'leak-1' },
  ] });
  const yaml = 'revocations:\n  - { kind: task, value: ticket-4711, reason: "task finished", end: 2026-12-01T00:00:00Z }\n  - { kind: kid, value: key-2026-10, reason: "key leaked", id: leak-1 }\n';
  const fromJson = parseList(json, 'list.json', 'url', NOW);
  const fromYaml = parseList(yaml, 'list.yaml', 'url', NOW);
  t.same(fromJson, fromYaml);
  t.equal(fromJson.length, 2);
  t.match(fromJson[0], { kind: 'task', value: 'ticket-4711', endMs: Date.parse('2026-12-01T00:00:00Z'), source: 'url' });
  t.match(fromJson[1], { id: 'leak-1', endMs: Infinity });
});

t.test('problems in a JSON list name the line and field of each', async (t) => {
  const text = [
    '[{"kind": "jti", "value": "a", "reason": "r"},',
    ' {"kind": "jti", "value": "", "reason": "r"},',
    ' {"kind": "jti", "value": "b",',
    '  "reason": "r", "colour": "red"},',
    ' {"kind": "jti", "value": "c", "reason": "r", "end": "soon"},',
    ' 7]',
  ].join('\n');
  const problems = parseList(text, 'list.json', 'file', NOW) as RulesProblem[];
  t.same(problems.map((p) => [p.line, p.field]), [
    [2, 'revocations[1].value'],
    [4, 'revocations[2].colour'],
    [5, 'revocations[3].end'],
    [6, 'revocations[4]'],
  ]);
  t.ok(problems.every((p) => p.file === 'list.json' && p.column > 0));
  t.match(problems[1]!.message, 'unknown field "colour"');
});

t.test('a list that is not one says so, at its first line', async (t) => {
  for (const text of ['{}', '42', 'revocations: 3\n']) {
    const [p, ...rest] = parseList(text, 'list', 'file', NOW) as RulesProblem[];
    t.equal(rest.length, 0, text);
    t.match(p, { line: 1, field: 'revocations', message: /must be a list of revocations/ }, text);
  }
});

t.test('a list with many problems names the first 20 and counts the rest', async (t) => {
  const text = JSON.stringify(Array.from({ length: 50 }, (_, i) => ({ kind: 'serial', value: `v${i}`, reason: 'r' })), null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW) as RulesProblem[];
  t.equal(problems.length, 21);
  t.equal(problems[19]!.field, 'revocations[19].kind');
  t.match(problems[20], { field: '', message: 'and 30 more problems' });
  t.ok(problems[20]!.line > problems[19]!.line, 'the count stands where the 21st problem is');
});
