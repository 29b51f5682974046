// What the stale-contract and deprecated-operation counters say a finding became. The
// suggested alert, increase(driftguard_stale_contract_calls_total{decision="deny"}[15m]) > 0,
// pages an owner: it must count only stale calls that staleness itself denied, not a stale
// warning on a request another check then denied (a retry storm), nor audit mode's would-deny,
// which was forwarded. Records as observation.ts builds them, read back from the exposition.

import t from 'tap';
import { Instruments } from '../../proxy/telemetry/instruments.ts';
import { forwardingFailed, type DecisionRecord } from '../../proxy/telemetry/record.ts';
import { parsePrometheus, sample } from './prometheus.ts';

function record(over: Partial<DecisionRecord>): DecisionRecord {
  return {
    time: '2026-11-27T00:00:00.000Z', timeMs: 0, traceId: 'a'.repeat(32), spanId: 'b'.repeat(16),
    decision: 'allow', enforced: true, reason: 'allowed', warnings: [], detail: '', method: 'POST', path: '/payments',
    operation: 'pay', consumer: 'agent', consumerKind: 'automation', owner: 'team-app', registered: true,
    currentContract: '2026-09', rules: 'r', checks: [], ...over,
  };
}

const cases: [string, DecisionRecord, string | undefined, string][] = [
  ['denied for staleness', record({ decision: 'deny', reason: 'stale-contract' }), undefined, 'deny'],
  ['audit mode: the would-deny, forwarded', record({ decision: 'deny', enforced: false, reason: 'stale-contract' }), undefined, 'would-deny'],
  ['only warned for staleness', record({ decision: 'warn', reason: 'stale-contract', warnings: ['stale-contract'] }), undefined, 'warn'],
  // Before: counted as decision="deny", and the stale-call alert paged for a retry storm.
  ['warned for staleness, then denied by a retry storm', record({ decision: 'deny', reason: 'retry-storm', warnings: ['stale-contract'] }), undefined, 'warn'],
  ['audit mode: warned, then a would-deny by another check', record({ decision: 'deny', enforced: false, reason: 'retry-storm', warnings: ['stale-contract'] }), undefined, 'warn'],
];
const failed = record({ decision: 'deny', enforced: false, reason: 'stale-contract' });
forwardingFailed(failed, 'upstream-unavailable', 'the upstream could not be reached (ECONNREFUSED)');
cases.push(['audit mode: the would-deny, forwarded, and the upstream failed', failed, 'upstream-unavailable', 'would-deny']);
// A stale warning already among the warnings when another check's would-deny is moved there.
const both = record({ decision: 'deny', enforced: false, reason: 'invalid-credential', warnings: ['stale-contract', 'invalid-credential'] });
forwardingFailed(both, 'upstream-unavailable', 'the upstream could not be reached (ECONNREFUSED)');
cases.push(['audit mode: warned, another check\'s would-deny, and the upstream failed', both, 'upstream-unavailable', 'warn']);

/** The decision's reason, before a failed forwarding replaced it in the record. */
const decidedOf = new Map([[failed, 'stale-contract'], [both, 'invalid-credential']]);

for (const [what, r, failure, expected] of cases) {
  t.test(what, async (t) => {
    const i = new Instruments();
    i.record(r, true, 0.001, failure, decidedOf.get(r) ?? r.reason);
    const m = parsePrometheus(i.registry.text());
    for (const decision of ['deny', 'would-deny', 'warn']) {
      t.equal(sample(m, 'driftguard_stale_contract_calls_total', { operation: 'pay', decision }), decision === expected ? 1 : undefined, `decision="${decision}"`);
    }
  });
}

t.test('deprecated calls the same way', async (t) => {
  const i = new Instruments();
  i.record(record({ decision: 'deny', reason: 'retry-storm', warnings: ['deprecated-operation'] }), true, 0.001, undefined);
  i.record(record({ decision: 'deny', reason: 'deprecated-operation' }), false, 0, undefined);
  const m = parsePrometheus(i.registry.text());
  t.equal(sample(m, 'driftguard_deprecated_calls_total', { decision: 'warn' }), 1);
  t.equal(sample(m, 'driftguard_deprecated_calls_total', { decision: 'deny' }), 1);
});

t.test('driftguard_would_deny_total counts every would-deny once, as GET /consumers does: an audit-mode denial and each feature would-deny', async (t) => {
  const i = new Instruments();
  // A feature in audit mode named a would-deny behind a warning that decided (before: no metric had it).
  i.record(record({ decision: 'warn', reason: 'deprecated-operation', warnings: ['deprecated-operation', 'task-binding-required'], extra: { 'lifecycle.would_deny': ['task-binding-required'] } }), true, 0.001, undefined);
  // proxy.mode audit: a denial forwarded, whose reason a feature also named.
  i.record(record({ decision: 'deny', enforced: false, reason: 'retry-storm', extra: { 'lifecycle.would_deny': ['retry-storm'] } }), true, 0.001, undefined);
  // Forwarded, and the upstream failed: counted under the decision's reason, not the failure's.
  i.record(failed, true, 0.001, 'upstream-unavailable', 'stale-contract');
  // Neither: a plain allow and an enforced denial.
  i.record(record({}), true, 0.001, undefined);
  i.record(record({ decision: 'deny', reason: 'stale-contract' }), false, 0, undefined);
  const m = parsePrometheus(i.registry.text());
  t.equal(sample(m, 'driftguard_would_deny_total', { reason: 'task-binding-required', operation: 'pay', consumer_kind: 'automation' }), 1, 'the feature\'s would-deny behind a warning');
  t.equal(sample(m, 'driftguard_would_deny_total', { reason: 'retry-storm' }), 1, 'once, though both kinds named it');
  t.equal(sample(m, 'driftguard_would_deny_total', { reason: 'stale-contract' }), 1, 'the audit-mode denial whose forwarding failed, by its own reason');
  t.equal(sample(m, 'driftguard_would_deny_total', { reason: 'upstream-unavailable' }), undefined);
  t.equal(sample(m, 'driftguard_would_deny_total', { reason: 'deprecated-operation' }), undefined, 'a warning is no would-deny');
});
