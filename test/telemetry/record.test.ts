// A feature's extra fields (ctx.extra) become log fields and driftguard.* span attributes next
// to the decision's own: none may take the name of one of those, or a log line could carry two
// "decision" keys and a span two driftguard.reason attributes.

import t from 'tap';
import { extraFields, forwardingFailed, logLine, FIELDS, type DecisionRecord } from '../../proxy/telemetry/record.ts';

/** A record with every optional field set, as a full decision would have it. */
const full: DecisionRecord = {
  time: '2026-11-26T00:00:00.000Z', timeMs: 0, traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331',
  decision: 'warn', enforced: true, reason: 'allowed', warnings: ['deprecated-operation'], detail: 'd', method: 'GET', path: '/a',
  route: '/a', operation: 'a', sensitivity: 'low', deprecated: true, sunset: '2027-01-01T00:00:00.000Z', replacement: 'b',
  consumer: 'c', consumerKind: 'automation', owner: 'o', registered: true, issuer: 'i', jti: 'j', declaredContract: '2026-06',
  currentContract: '2026-09', changedIn: '2026-09', rules: 'h', status: 200, durationMs: 1, upstreamMs: 1, addedMs: 0,
  checks: [{ check: 'operation', outcome: 'continue' }],
};

t.test('an extra field never takes the name of a log field or a span attribute of the decision', async (t) => {
  const logKeys = Object.keys(JSON.parse(logLine(full)) as object);
  const attributeKeys = [...FIELDS.map(([, a]) => a), 'driftguard.check.outcome', 'driftguard.check.reason'].map((a) => a.replace(/^driftguard\./, ''));
  t.ok(logKeys.length >= 30, `the full record writes ${logKeys.length} log fields`);
  for (const name of [...logKeys, ...attributeKeys]) {
    t.equal(extraFields({ [name]: 'spoofed' }), undefined, name);
  }
});

t.test('an extra field of its own name is kept, cut to size', async (t) => {
  const out = extraFields({ 'credential.task': 'task-1', 'delegation.chain': ['a', 'b'], 'retry_storm.repeats': 3, 'bad key': 'x', 'x.object': { a: 1 }, 'long.text': 'y'.repeat(5000) });
  t.same(Object.keys(out ?? {}).sort(), ['credential.task', 'delegation.chain', 'long.text', 'retry_storm.repeats']);
  t.equal(out!['long.text'], 'y'.repeat(1024));
});

t.test('a failed forwarding: the record takes the forward stage\'s reason and keeps what the checks said', async (t) => {
  const allowed: DecisionRecord = { ...full, decision: 'allow', reason: 'allowed', warnings: [] };
  forwardingFailed(allowed, 'upstream-timeout', 'the upstream did not answer in time (UND_ERR_HEADERS_TIMEOUT)');
  t.match(allowed, { decision: 'allow', reason: 'upstream-timeout', warnings: [], detail: /UND_ERR_HEADERS_TIMEOUT/ });
  const warned: DecisionRecord = { ...full, decision: 'warn', reason: 'deprecated-operation', warnings: ['deprecated-operation'] };
  forwardingFailed(warned, 'upstream-unavailable', 'x');
  t.same(warned.warnings, ['deprecated-operation'], 'a warning is already among the warnings');
  const wouldDeny: DecisionRecord = { ...full, decision: 'deny', enforced: false, reason: 'stale-contract', warnings: ['deprecated-operation'] };
  forwardingFailed(wouldDeny, 'upstream-unavailable', 'x');
  t.match(wouldDeny, { decision: 'deny', enforced: false, reason: 'upstream-unavailable' });
  t.same(wouldDeny.warnings, ['stale-contract', 'deprecated-operation'], 'audit mode\'s would-deny reason is not lost');
});
