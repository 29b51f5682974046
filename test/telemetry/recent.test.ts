// The recent-decisions ring is bounded by count and by the heap its entries hold: requests
// with long paths (anyone can send them, and denials are always kept) or long subjects cannot
// make it hold more memory than telemetry.recent.maxBytes.

import t from 'tap';
import { Ring, recentEntry, matches, parseFilter, type RecentEntry } from '../../proxy/telemetry/recent.ts';
import type { DecisionRecord } from '../../proxy/telemetry/record.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules } from '../support/driftguard.ts';
import { startWithTelemetry } from './support.ts';

const entry = (id: number, chars: number): RecentEntry => ({
  timeMs: id, traceId: String(id), decision: 'deny', enforced: true, wouldDeny: false, reason: 'unknown-operation', warnings: [],
  consumer: undefined, issuer: undefined, owner: undefined, operation: undefined, line: `{"n":${id}}`.padEnd(chars, ' '), weight: chars,
});
const ids = (r: Ring) => [...r.newest()].map((e) => e.timeMs);

t.test('by count, the oldest is overwritten first', async (t) => {
  const r = new Ring(5);
  for (let i = 1; i <= 7; i++) r.push(entry(i, 100));
  t.same(ids(r), [7, 6, 5, 4, 3]);
  t.equal(r.bytes, 500);
});

t.test('an entry weighs what it holds: a line beyond Latin-1 twice its length, and the subject beside it', async (t) => {
  const record = (consumer?: string) => ({ timeMs: 1, traceId: 't', decision: 'deny', reason: 'r', warnings: [], consumer, owner: undefined, operation: undefined }) as unknown as DecisionRecord;
  const ascii = recentEntry(record(), 'x'.repeat(1000));
  const wide = recentEntry(record(), 'Ж' + 'x'.repeat(999));
  t.equal(wide.weight - ascii.weight, 1000, 'one Cyrillic letter makes the whole line two bytes a character (before: counted as 1,000)');
  const subject = 'spiffe://example.test/' + 'a'.repeat(5000);
  t.equal(recentEntry(record(subject), 'x'.repeat(1000)).weight - ascii.weight, subject.length, 'the subject counts (before: not at all)');
});

t.test('by weight, the oldest are dropped until the entries fit; the newest is always kept', async (t) => {
  const r = new Ring(100, 3000);
  for (let i = 1; i <= 5; i++) r.push(entry(i, 1000));
  t.same(ids(r), [5, 4, 3], 'three lines of 1,000 fit in 3,000');
  r.push(entry(6, 2500));
  t.same(ids(r), [6], 'a line of 2,500 pushes out all three');
  r.push(entry(7, 5000));
  t.same(ids(r), [7], 'a line larger than the bound is still kept, alone');
  t.equal(r.bytes, 5000);
  for (let i = 8; i <= 10; i++) r.push(entry(i, 1000));
  t.same(ids(r), [10, 9, 8]);
  t.equal(r.bytes, 3000);
});

t.test('through the admin listener: long paths fill the bound, not the count', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none' }, recent: { size: 1000, maxBytes: 65536 } };
  }));
  t.teardown(async () => { await dg.stop(); await up.close(); await keys.close(); });
  const long = '/' + 'a'.repeat(2000);
  let denied = 0;
  for (let i = 0; i < 100; i++) { const res = await fetch(`${dg.url}${long}${i}`); await res.text(); if (res.status === 403) denied++; }
  t.equal(denied, 100, 'each an unknown operation');
  const held = (await (await fetch(`${dg.admin}/decisions?limit=1000`)).json()) as { held: number; decisions: { path: string }[] };
  t.equal(held.decisions.length, held.held);
  t.equal(held.decisions[0]!.path, `${long}99`, 'the newest first');
  // An entry as served is its log line without "msg": within a few characters of the line,
  // which is most of what an entry weighs.
  const chars = held.decisions.map((d) => JSON.stringify(d).length + 20);
  const total = chars.reduce((a, b) => a + b, 0);
  t.ok(held.held < 100, `${held.held} of 100 decisions held`);
  t.ok(total <= 65536 && total > 0.85 * 65536, `their lines, about ${total} characters, fill most of the 65,536 bytes allowed`);
});

t.test('a 12 KiB path makes no record 12 KiB: the detail quotes 200 characters, the path field 2 KiB', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none' } };
  }));
  t.teardown(async () => { await dg.stop(); await up.close(); await keys.close(); });
  const path = '/' + 'b'.repeat(12_000);
  const res = await fetch(dg.url + path);
  const problem = await res.json() as { code: string; detail: string };
  t.equal(problem.code, 'unknown-operation');
  t.equal(problem.detail, `GET /${'b'.repeat(199)}... is not an operation of contract version 2026-09`);
  const held = (await (await fetch(`${dg.admin}/decisions?limit=1`)).json()) as { decisions: { path: string; detail: string }[] };
  t.equal(held.decisions[0]!.detail, problem.detail);
  t.equal(held.decisions[0]!.path.length, 2048);
  t.ok(JSON.stringify(held.decisions[0]).length < 3500, 'the whole entry stays small');
});

t.test('/decisions?decision=would-deny: the audit-mode denials, as the counters and /consumers name them', async (t) => {
  const now = Date.now();
  const audit = { ...entry(1, 10), decision: 'deny', enforced: false, wouldDeny: true };
  const enforced = { ...entry(2, 10), decision: 'deny', enforced: true };
  const warned = { ...entry(3, 10), decision: 'warn', enforced: true };
  const pick = (q: string) => [audit, enforced, warned].filter((e) => matches(e, parseFilter(new URLSearchParams(q), now))).map((e) => e.timeMs);
  t.same(pick('decision=would-deny'), [1], 'only the deny that was not enforced');
  t.same(pick('decision=deny'), [1, 2], 'deny: enforced or not, as the log\'s decision field says');
  t.throws(() => parseFilter(new URLSearchParams('decision=maybe'), now), /decision: must be allow, warn, deny or would-deny/);
});

t.test('/decisions?decision=would-deny also finds a feature\'s would-deny in audit mode (lifecycle.would_deny), as /consumers counts it', async (t) => {
  const now = Date.now();
  // As record.ts builds them: credentials.mode audit lets a DELETE without task id through as
  // a warn naming the would-deny; a proxy.mode audit deny; an enforced deny; a plain warn.
  const record = (decision: string, enforced: boolean, reason: string, extra?: Record<string, string[]>) => ({
    timeMs: now, traceId: 't', decision, enforced, reason, warnings: decision === 'warn' ? [reason] : [], consumer: 'my-agent', owner: 'team-x', operation: 'delItem', ...(extra ? { extra } : {}),
  }) as unknown as DecisionRecord;
  const entries = [
    recentEntry(record('warn', true, 'task-binding-required', { 'lifecycle.would_deny': ['task-binding-required'] }), '{}'),
    recentEntry(record('deny', false, 'unknown-operation'), '{}'),
    recentEntry(record('deny', true, 'unknown-operation'), '{}'),
    recentEntry(record('warn', true, 'deprecated-operation'), '{}'),
    // A feature's would-deny beside another check's enforced denial: /consumers counts both.
    recentEntry(record('deny', true, 'retry-storm', { 'lifecycle.would_deny': ['credential-revoked'] }), '{}'),
  ];
  const pick = (q: string) => entries.flatMap((e, i) => matches(e, parseFilter(new URLSearchParams(q), now)) ? [i] : []);
  t.same(pick('decision=would-deny'), [0, 1, 4], 'before: only the proxy.mode audit deny');
  t.same(pick('decision=warn'), [0, 3], 'warn still matches the log\'s decision field');
  t.same(pick('decision=deny'), [1, 2, 4]);
});
