// Revocation list documents: a JSON list is read with JSON.parse and a YAML one as a document;
// both must give the same revocations, and problems in either must name line and field.

import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseList, jsonValuesOver, MAX_DOCUMENT_BYTES, MAX_LIST_BYTES, WRAPPER_VALUES } from '../../proxy/lifecycle/lists.ts';
import { cli } from '../support/subprocess.ts';
import type { RulesProblem } from '../../proxy/rules/load.ts';
import { matchEach } from '../support/lists.ts';

const NOW = Date.parse('2026-11-26T00:00:00Z');
/** revocation.maxEntries as the schema defaults it. */
const MAX = 20_000;

t.test('the same list as JSON and as YAML gives the same revocations', async (t) => {
  const json = JSON.stringify({ revocations: [
    { kind: 'task', value: 'ticket-4711', reason: 'task finished', end: '2026-12-01T00:00:00Z' },
    { kind: 'kid', value: 'key-2026-10', reason: 'key leaked', id: 'leak-1' },
  ] });
  const yaml = 'revocations:\n  - { kind: task, value: ticket-4711, reason: "task finished", end: 2026-12-01T00:00:00Z }\n  - { kind: kid, value: key-2026-10, reason: "key leaked", id: leak-1 }\n';
  const fromJson = parseList(json, 'list.json', 'url', NOW, MAX);
  const fromYaml = parseList(yaml, 'list.yaml', 'url', NOW, MAX);
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
  const problems = parseList(text, 'list.json', 'file', NOW, MAX) as RulesProblem[];
  t.same(problems.map((p) => [p.line, p.field]), [
    [2, 'revocations[1].value'],
    [4, 'revocations[2].colour'],
    [5, 'revocations[3].end'],
    [6, 'revocations[4]'],
  ]);
  t.ok(problems.every((p) => p.file === 'list.json' && p.column > 0));
  t.match(problems[1]!.message, 'unknown field "colour"');
});

t.test('an entry whose value holds a whole token is a problem that does not quote it', async (t) => {
  const token = 'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZ2VudCIsImp0aSI6ImFiYyJ9.' + 'S'.repeat(86);
  const text = JSON.stringify({ revocations: [{ kind: 'jti', value: 'abc', reason: 'r' }, { kind: 'jti', value: token, reason: 'pasted' }] }, null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, MAX) as RulesProblem[];
  t.same(problems.map((p) => p.field), ['revocations[1].value']);
  t.match(problems[0]!.message, 'holds a whole token');
  t.notOk(JSON.stringify(problems).includes('S'.repeat(86)), 'the token is not quoted');
});

t.test('a token in an entry\'s reason or id is a problem that does not quote it; an unknown key that is no word is not quoted', async (t) => {
  const token = 'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZ2VudCIsImp0aSI6ImFiYyJ9.' + 'S'.repeat(86);
  const text = JSON.stringify({ revocations: [
    { kind: 'jti', value: 'abc', reason: `leaked in OPS-1: Bearer ${token}` },
    { kind: 'jti', value: 'def', reason: 'r', id: token },
  ] }, null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, MAX) as RulesProblem[];
  t.same(problems.map((p) => [p.field, p.line]), [['revocations[0].reason', 6], ['revocations[1].id', 12]]);
  t.ok(problems.every((p) => p.message.includes('holds a whole token')));
  // `value: ` left out of a flow entry: YAML reads the token as a key with no value.
  const yaml = `revocations:\n  - { kind: jti, value: abc, reason: r }\n  - { kind: jti, reason: leaked in OPS-1, ${token} }\n`;
  const keyed = parseList(yaml, 'list.yaml', 'file', NOW, MAX) as RulesProblem[];
  matchEach(t, keyed, [{ field: 'revocations[1]', line: 3, message: 'unknown field (a key that is no field name)' }, { field: 'revocations[1].value', message: 'must be a non-empty string' }]);
  t.notOk(JSON.stringify([problems, keyed]).includes('S'.repeat(86)), 'the token is not quoted');
});

t.test('a YAML list\'s syntax error does not quote the line it is on', async (t) => {
  // A line that lost its indentation: the yaml package's message ends with the line's value.
  const yaml = '- kind: jti\n  reason: leaked in OPS-1\nvalue: sk-live-0123456789abcdef\n';
  const problems = parseList(yaml, 'list.yaml', 'file', NOW, MAX) as RulesProblem[];
  t.ok(problems.length > 0, 'refused');
  t.match(problems[0], { line: 3, message: /^YAML: / });
  t.notOk(JSON.stringify(problems).includes('sk-live'), `not quoted: ${problems.map((p) => p.message).join(' | ')}`);
});

t.test('an end that is not an ISO 8601 time that exists is a problem, not a date Date.parse guessed', async (t) => {
  // Date.parse took 1 as 2001 (the revocation ended long ago: never enforced), read
  // '2027-12-01 10:00' in the process's time zone, and rolled 2027-02-30 over to March 2.
  const ends = [1, '1', '12/01/2027', 'Dec 1 2027', '2027-12-01 10:00', '2027-02-30', '2027-12-01T10:00:00'];
  const text = JSON.stringify({ revocations: ends.map((end, i) => ({ kind: 'jti', value: `j${i}`, reason: 'r', end })) }, null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, MAX) as RulesProblem[];
  t.same(problems.map((p) => p.field), ends.map((_, i) => `revocations[${i}].end`));
  t.ok(problems.every((p, i) => (typeof ends[i] === 'string' ? /not an ISO 8601 time/ : /^must be a string/).test(p.message)), 'a number is not a string');
  const good = parseList(JSON.stringify({ revocations: [{ kind: 'jti', value: 'j', reason: 'r', end: '2027-12-01T10:00:00+02:00' }, { kind: 'jti', value: 'k', reason: 'r', end: '2028-02-29' }] }), 'list.json', 'file', NOW, MAX);
  matchEach(t, good, [{ endMs: Date.parse('2027-12-01T08:00:00Z') }, { endMs: Date.parse('2028-02-29T00:00:00Z') }]);
});

t.test('a YAML timestamp as end (a %YAML 1.1 document, a !!timestamp tag) is a problem, not a time read as UTC', async (t) => {
  for (const text of [
    '%YAML 1.1\n---\nrevocations:\n  - kind: jti\n    value: a\n    reason: r\n    end: 2027-12-01 10:00:00\n',
    '%YAML 1.1\n---\nrevocations:\n  - kind: jti\n    value: a\n    reason: r\n    end: 2027-02-30\n',
    'revocations:\n  - kind: jti\n    value: a\n    reason: r\n    end: !!timestamp 2027-12-01 10:00:00\n',
  ]) {
    // Refused either way: as a Date (plain node reads a %YAML 1.1 timestamp so), or as a
    // string without an offset (as it reads here, under tap's loader).
    const problems = parseList(text, 'list.yaml', 'file', NOW, MAX) as RulesProblem[];
    matchEach(t, problems, [{ field: 'revocations[0].end', message: /must be a quoted string|not an ISO 8601 time/ }], text);
  }
  const quoted = parseList('%YAML 1.1\n---\nrevocations:\n  - kind: jti\n    value: a\n    reason: r\n    end: "2027-12-01T10:00:00+02:00"\n', 'list.yaml', 'file', NOW, MAX);
  matchEach(t, quoted, [{ endMs: Date.parse('2027-12-01T08:00:00Z') }], 'quoted, it is read');
});

t.test('a list that is not one says so, at its first line', async (t) => {
  for (const text of ['{}', '42', 'revocations: 3\n']) {
    const [p, ...rest] = parseList(text, 'list', 'file', NOW, MAX) as RulesProblem[];
    t.equal(rest.length, 0, text);
    t.match(p, { line: 1, field: 'revocations', message: /must be a list of revocations/ }, text);
  }
});

t.test('a list with many problems names the first 20 and counts the rest', async (t) => {
  const text = JSON.stringify(Array.from({ length: 50 }, (_, i) => ({ kind: 'serial', value: `v${i}`, reason: 'r' })), null, 1);
  const problems = parseList(text, 'list.json', 'file', NOW, MAX) as RulesProblem[];
  t.equal(problems.length, 21);
  t.equal(problems[19]!.field, 'revocations[19].kind');
  t.match(problems[20], { field: '', message: 'and 30 more problems' });
  t.ok(problems[20]!.line > problems[19]!.line, 'the count stands where the 21st problem is');
});

// yaml's document holds about 75 times its text in memory: above MAX_DOCUMENT_BYTES no
// document is built. A YAML list is refused there; a JSON one is still read, and its problems
// are named by entry and field (line 1), or by JSON.parse's own line and column.
const entry = (i: number) => ({ kind: 'jti', value: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, reason: `incident INC-${i}: token leaked in a CI log` });
const yamlOf = (n: number) => 'revocations:\n' + Array.from({ length: n }, (_, i) => `  - kind: jti\n    value: "${entry(i).value}"\n    reason: "${entry(i).reason}"\n`).join('');

t.test('a YAML list larger than MAX_DOCUMENT_BYTES is refused, and says to write JSON', async (t) => {
  const small = yamlOf(1500);
  t.ok(small.length < MAX_DOCUMENT_BYTES, `${small.length} bytes`);
  t.equal((parseList(small, 'list.yaml', 'file', NOW, MAX) as unknown[]).length, 1500, 'a YAML list below the limit is read');
  const large = yamlOf(3000);
  t.ok(large.length > MAX_DOCUMENT_BYTES, `${large.length} bytes`);
  const problems = parseList(large, 'list.yaml', 'file', NOW, MAX) as RulesProblem[];
  t.equal(problems.length, 1);
  t.match(problems[0], { file: 'list.yaml', line: 1, column: 1, field: '', message: /larger than 256 KiB, the most a YAML list may be.*write a larger list as JSON/ });
  t.equal((parseList(JSON.stringify({ revocations: Array.from({ length: 3000 }, (_, i) => entry(i)) }), 'list.json', 'file', NOW, MAX) as unknown[]).length, 3000, 'the same entries as JSON are read');
});

t.test('a JSON list larger than MAX_DOCUMENT_BYTES: problems by entry and field, or where JSON.parse stopped', async (t) => {
  const entries: Record<string, unknown>[] = Array.from({ length: 4000 }, (_, i) => entry(i));
  entries[2500] = { ...entries[2500], kind: 'jwt' };
  const text = JSON.stringify({ revocations: entries }, null, 1);
  t.ok(text.length > MAX_DOCUMENT_BYTES);
  t.same((parseList(text, 'list.json', 'url', NOW, MAX) as RulesProblem[]).map((p) => [p.line, p.field]), [[1, 'revocations[2500].kind']]);
  const lines = text.split('\n');
  // Line 20 is an entry's `"value": "…",`: without its comma, JSON.parse stops at the next line.
  t.match(lines[19], /^ {3}"value": ".*",$/);
  const broken = [...lines.slice(0, 19), lines[19]!.replace(/,$/, ''), ...lines.slice(20)].join('\n');
  const [p, ...rest] = parseList(broken, 'list.json', 'url', NOW, MAX) as RulesProblem[];
  t.equal(rest.length, 0);
  t.match(p, { line: 21, column: 4, field: '', message: /not valid JSON at line 21 column 4 \(Expected ',' or '}' after property value\)/ }, 'the line and column JSON.parse names');
  // An unquoted value: JSON.parse's message quoted the text around it, a secret here.
  const quoted = [...lines.slice(0, 19), '   "value": sk_live_4eC39HqLyjWDarjtT1zdp7dc,', ...lines.slice(20)].join('\n');
  const [q] = parseList(quoted, 'list.json', 'url', NOW, MAX) as RulesProblem[];
  t.match(q!.message, /not valid JSON/);
  t.notMatch(q!.message, /sk_live/, 'none of the list\'s text in the problem');
});

t.test('under the chart\'s heap limits, a 3 MiB YAML list or a JSON list near MAX_LIST_BYTES with one bad entry stops start-up with its problem, not the process', async (t) => {
  // Real process, real limits: before MAX_DOCUMENT_BYTES both ended in a V8 heap OOM (exit 134).
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-lists-'));
  const bad: Record<string, unknown>[] = Array.from({ length: 24000 }, (_, i) => entry(i));
  bad[20000] = { ...bad[20000], kind: 'jwt' };
  // Larger than a YAML list may be, within MAX_LIST_BYTES.
  writeFileSync(join(dir, 'list.yaml'), yamlOf(24000));
  writeFileSync(join(dir, 'list.json'), JSON.stringify({ revocations: bad }, null, 1));
  for (const [list, expected] of [['list.yaml', /list\.yaml:1:1: .*the most a YAML list may be/], ['list.json', /list\.json:1:1: revocations\[20000\]\.kind: must be one of/]] as const) {
    const rules = readFileSync(new URL('../../rules/demo.yaml', import.meta.url), 'utf8')
      .replace('127.0.0.1:15080', '127.0.0.1:0').replace('127.0.0.1:15021', '127.0.0.1:0') + `\nrevocation:\n  file: ${list}\n  maxEntries: 50000\n`;
    writeFileSync(join(dir, `rules-${list}.yaml`), rules);
    const { code, stderr } = await cli(['run', '--config', join(dir, `rules-${list}.yaml`)], { env: { NODE_OPTIONS: '--max-old-space-size=112 --max-semi-space-size=4' } });
    t.equal(code, 1, `${list}: exit 1 (invalid rules), not a crash`);
    t.match(stderr, expected, `${list}: the problem, with file, line and field`);
    t.notMatch(stderr, /heap out of memory/);
  }
});

t.test('a JSON list whose values are more than maxEntries entries can hold is refused before it is parsed', async (t) => {
  // A value's braces and commas inside strings do not count; an escaped quote does not end one.
  t.notOk(jsonValuesOver(JSON.stringify([{ kind: 'jti', value: 'a,b,{c}[d]', reason: 'say \\"x, y\\" {z}' }]), 1));
  t.ok(jsonValuesOver('[' + '{},'.repeat(WRAPPER_VALUES + 1) + '{}]', 1), 'more mappings than one entry and its wrapper can have');
  t.ok(jsonValuesOver('[' + '1,'.repeat(WRAPPER_VALUES + 13) + '1]', 2), 'more values than two entries have, and their wrapper');
  const full = Array.from({ length: 100 }, (_, i) => ({ ...entry(i), end: '2027-01-01', id: `i${i}` }));
  t.notOk(jsonValuesOver(JSON.stringify({ revocations: full }), 100), 'a full list of whole entries fits');
  // Before: refused, its wrapper's brackets counted as entries.
  t.notOk(jsonValuesOver(JSON.stringify({ generator: { name: 'x', at: { y: [1, 2, 3] } }, shards: [{ a: 1 }, { b: 2 }], revocations: full }), 100), 'and so does one whose wrapper carries objects of its own');
  // Above MAX_DOCUMENT_BYTES: refused unparsed, with the bound.
  const arrays = '[' + '[],'.repeat(150_000) + '[]]';
  t.ok(arrays.length > MAX_DOCUMENT_BYTES);
  t.match(parseList(arrays, 'list.json', 'url', NOW, MAX), [{ line: 1, field: '', message: 'the list has more entries than revocation.maxEntries (20000) allows' }]);
  // Below it, parsed, and refused by its count before an entry is built.
  t.match(parseList(JSON.stringify(Array.from({ length: 30 }, (_, i) => entry(i))), 'list.json', 'url', NOW, 20), [{ field: 'revocations', message: 'the list has 30 entries, more than revocation.maxEntries (20)' }]);
});

t.test('under the chart\'s heap limits, a list at MAX_LIST_BYTES of far more entries than maxEntries stops start-up with its problem, not the process', async (t) => {
  // Before: JSON.parse built 2.8 million arrays, or 200,000 entries each hashed, and V8 ran
  // out of heap (exit 134), at start and at every pod reading the list URL.
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-lists-'));
  const short = JSON.stringify({ kind: 'jti', value: 'v', reason: 'r' });
  const lists = {
    'arrays.json': '[' + '[],'.repeat(Math.floor(MAX_LIST_BYTES / 3) - 2) + '[]]',
    'short.json': '[' + Array.from({ length: Math.floor(MAX_LIST_BYTES / (short.length + 1)) - 1 }, () => short).join(',') + ']',
  };
  for (const [list, text] of Object.entries(lists)) {
    t.ok(text.length <= MAX_LIST_BYTES, `${list}: ${text.length} bytes, within MAX_LIST_BYTES`);
    writeFileSync(join(dir, list), text);
    const rules = readFileSync(new URL('../../rules/demo.yaml', import.meta.url), 'utf8')
      .replace('127.0.0.1:15080', '127.0.0.1:0').replace('127.0.0.1:15021', '127.0.0.1:0') + `\nrevocation:\n  file: ${list}\n`;
    writeFileSync(join(dir, `rules-${list}.yaml`), rules);
    const { code, stderr } = await cli(['run', '--config', join(dir, `rules-${list}.yaml`)], { env: { NODE_OPTIONS: '--max-old-space-size=112 --max-semi-space-size=4' } });
    t.equal(code, 1, `${list}: exit 1 (invalid rules), not a crash`);
    t.match(stderr, new RegExp(`${list}:1:1: .*more entries than revocation\\.maxEntries \\(20000\\)`), `${list}: the problem`);
    t.notMatch(stderr, /heap out of memory/);
  }
});
