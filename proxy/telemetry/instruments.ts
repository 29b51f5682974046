// driftguard's metrics, all in one place: names, help, labels, buckets. Label values come
// from the rules (operations, reason codes, registered consumers and their owners) or small
// fixed sets, so cardinality is bounded: a subject the registry does not know is counted as
// consumer="unregistered", a request without a verified caller as consumer="anonymous".

import { getHeapStatistics } from 'node:v8';
import type { Driftguard } from '../server.ts';
import { Collected, Counter, Histogram, Registry } from './metrics.ts';
import { cutBy, type DecisionRecord } from './record.ts';
import type { SpanCounts } from './tracing.ts';
import type { DecisionLog } from './decision-log.ts';

const ADDED_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const UPSTREAM_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Instruments {
  readonly registry = new Registry();
  readonly decisions = this.registry.add(new Counter('driftguard_decisions_total', 'Decisions made, by decision, whether enforced (false: audit mode, forwarded anyway), reason code, operation and consumer kind. A request whose forwarding failed or was withdrawn counts with the checks\' decision under the forward stage\'s reason.', ['decision', 'enforced', 'reason', 'operation', 'consumer_kind']));
  readonly stale = this.registry.add(new Counter('driftguard_stale_contract_calls_total', 'Calls declaring a contract version older than the operation\'s changedIn or the minimum, by consumer, owner, operation and what staleness decided (deny, would-deny in audit mode, or warn, even when another check then denied the call).', ['consumer', 'owner', 'operation', 'decision']));
  readonly deprecated = this.registry.add(new Counter('driftguard_deprecated_calls_total', 'Calls to a deprecated operation, by consumer, owner, operation and what the deprecation decided (deny, would-deny in audit mode, or warn, even when another check then denied the call).', ['consumer', 'owner', 'operation', 'decision']));
  readonly wouldDeny = this.registry.add(new Counter('driftguard_would_deny_total', 'Would-denies, both kinds, as GET /decisions?decision=would-deny lists them: a denial proxy.mode audit forwarded (enforced false) and each reason a feature in audit mode would have refused for (lifecycle.would_deny), each once per request, by reason code, operation and consumer kind; calls without a verified consumer included, which GET /consumers cannot list. What enforcing would refuse.', ['reason', 'operation', 'consumer_kind']));
  readonly added = this.registry.add(new Histogram('driftguard_added_latency_seconds', 'Time driftguard itself added to a request: the whole request minus the time spent on the upstream.', ['decision'], ADDED_BUCKETS));
  readonly upstream = this.registry.add(new Histogram('driftguard_upstream_duration_seconds', 'Time from forwarding a request to the end of the upstream\'s response, for forwarded requests.', [], UPSTREAM_BUCKETS));
  readonly upstreamFailures = this.registry.add(new Counter('driftguard_upstream_failures_total', 'Forwarded requests that got no upstream response, by reason code.', ['reason']));
  readonly cut = this.registry.add(new Counter('driftguard_answers_cut_total', 'Forwarded answers cut after they had started (the caller got a status and part of a body), and forwarded requests driftguard cut before their answer started (drain, revoked, reload, expired), by who ended them: client (the client left, read too slowly: proxy.timeouts.clientRead, kept its connection idle past its limit, sent a request body whose framing broke while it was forwarded or that did not all come within proxy.timeouts.request, or pipelined a flood that driftguard cut its connection for), drain (driftguard, at the end of a drain\'s grace period), revoked (driftguard, for a revocation or quarantine made while it streamed), reload (driftguard, for reloaded rules that refuse its request), expired (driftguard, for an event stream whose token expired or whose operation\'s sunset came) or upstream (a reset, a bad chunk, a body timeout; the decision record\'s cut field names the error).', ['by']));
  readonly tokenCache = this.registry.add(new Counter('driftguard_token_cache_total', 'Verified-token cache lookups: hit (no signature check) or miss.', ['result']));
  readonly unparsed = this.registry.add(new Counter('driftguard_unparsed_requests_total', 'Requests Node\'s HTTP parser refused before there was a request to decide (no decision record, span or log line), by the reason code they were answered with.', ['reason']));
  readonly dropped = this.registry.add(new Counter('driftguard_connections_dropped_total', 'Client connections closed unanswered, by listener and cause: connection-limit (the listener held as many as it may), pipelining-flood (more pipelined requests waiting than driftguard holds).', ['listener', 'cause']));

  /** Gauges and counters kept elsewhere (key sets, reloads, spans, log), read at scrape time. */
  collect(dg: Driftguard, spans: SpanCounts, log: DecisionLog): void {
    // By issuer and source: the source alone (a URL without its query) can be two issuers' own.
    const keySets = () => dg.generation.identity.issuerKeySets().map(([issuer, k]) => ({ issuer, ...k.status() }));
    const r = this.registry;
    r.add(new Collected('driftguard_jwks_refreshes_total', 'Signing-key set fetches of each issuer\'s JWKS, by result (counts restart when a reload replaces the key set).', 'counter', ['issuer', 'source', 'result'],
      () => keySets().flatMap((s) => [[[s.issuer, s.source, 'success'], s.refreshes] as const, [[s.issuer, s.source, 'failure'], s.failures] as const])));
    r.add(new Collected('driftguard_jwks_key_set_age_seconds', 'Seconds since the key set was last fetched successfully (absent until the first success).', 'gauge', ['issuer', 'source'],
      () => keySets().filter((s) => s.lastSuccessMs !== undefined).map((s) => [[s.issuer, s.source], (Date.now() - s.lastSuccessMs!) / 1000] as const)));
    r.add(new Collected('driftguard_jwks_ready', '1 when the key set has keys to verify with.', 'gauge', ['issuer', 'source'],
      () => keySets().map((s) => [[s.issuer, s.source], s.ready ? 1 : 0] as const)));
    r.add(new Collected('driftguard_spans_exported_total', 'Spans the trace exporter delivered.', 'counter', [], () => [[[], spans.exported]]));
    r.add(new Collected('driftguard_spans_dropped_total', 'Spans lost: queue_full (the batch queue was full), export_failed (the collector refused, was unreachable or timed out) or rejected (the collector took them and answered that it rejected them, an OTLP partial success).', 'counter', ['cause'],
      () => [[['queue_full'], spans.dropped.queue_full], [['export_failed'], spans.dropped.export_failed], [['rejected'], spans.dropped.rejected]]));
    r.add(new Collected('driftguard_decision_log_lines_total', 'Decision log lines the output took.', 'counter', [], () => [[[], log.lines]]));
    r.add(new Collected('driftguard_decision_log_dropped_total', 'Decision log lines dropped: the output could not keep up, or failed.', 'counter', [], () => [[[], log.dropped]]));
    r.add(new Collected('driftguard_rules_reloads_total', 'Rules reloads, by result (failure: the last good rules stayed in force).', 'counter', ['result'], () => {
      const s = dg.reloadStatus;
      return [[['success'], s?.succeeded ?? 0], [['failure'], s?.failed ?? 0]];
    }));
    r.add(new Collected('driftguard_rules_info', 'The rules in force (hash of the rules file), always 1.', 'gauge', ['hash'], () => [[[dg.generation.rules.hash], 1]]));
    const tables = () => [...dg.tables].map(([name, fill]) => [name, fill()] as const);
    r.add(new Collected('driftguard_table_entries', 'Entries held in each bounded table: token_cache, consumers, fingerprints, idempotency_keys, quarantines, revocations, recent_decisions, decision_log_buffer.', 'gauge', ['table'],
      () => tables().map(([name, f]) => [[name], f.entries] as const)));
    r.add(new Collected('driftguard_table_fill_ratio', 'Share of each bounded table\'s bound in use, 0 to 1 (of its count or its weight, whichever is fuller): at 1, its least recently used entries are being pushed out (revocations: writes are refused; the decision log: lines are dropped).', 'gauge', ['table'],
      () => tables().map(([name, f]) => [[name], f.fill] as const)));
    r.add(new Collected('driftguard_in_flight_requests', 'Requests being handled now, WebSocket tunnels included.', 'gauge', [], () => [[[], dg.inFlight]]));
    r.add(new Collected('driftguard_websocket_tunnels', 'Open WebSocket tunnels, and handshakes being decided.', 'gauge', [], () => [[[], dg.tunnels]]));
    processMetrics(r);
  }

  /**
   * Count one finished request. `decided`: the decision's own reason, which a failed
   * forwarding's reason replaced in the record (default: the record's).
   */
  record(r: DecisionRecord, forwarded: boolean, upstreamSeconds: number, failure: string | undefined, decided = r.reason): void {
    const operation = r.operation ?? 'none';
    this.decisions.inc([r.decision, r.enforced ? 'true' : 'false', r.reason, operation, r.consumerKind ?? 'none']);
    const stale = r.reason === 'stale-contract' || r.warnings.includes('stale-contract');
    const deprecated = r.reason === 'deprecated-operation' || r.warnings.includes('deprecated-operation');
    if (stale || deprecated) {
      const consumer = r.consumer === undefined ? 'anonymous' : r.registered ? r.consumer : 'unregistered';
      const owner = r.registered && r.owner !== undefined ? r.owner : 'none';
      if (stale) this.stale.inc([consumer, owner, operation, verdict(r, 'stale-contract', decided)]);
      if (deprecated) this.deprecated.inc([consumer, owner, operation, verdict(r, 'deprecated-operation', decided)]);
    }
    const audited = r.extra?.['lifecycle.would_deny'];
    const forwardedDenial = r.decision === 'deny' && !r.enforced;
    if (forwardedDenial || Array.isArray(audited)) {
      // Each reason once: a feature's would-deny that is also the audit-mode denial's reason is one.
      const reasons = new Set(Array.isArray(audited) ? audited.filter((x): x is string => typeof x === 'string') : []);
      if (forwardedDenial) reasons.add(decided);
      for (const reason of reasons) this.wouldDeny.inc([reason, operation, r.consumerKind ?? 'none']);
    }
    if (r.addedMs !== undefined) this.added.observe([r.decision], r.addedMs / 1000);
    if (forwarded) this.upstream.observe([], upstreamSeconds);
    // The upstream's failures only: a body the forward stage refused (malformed-request) never went.
    if (failure !== undefined && failure.startsWith('upstream-')) this.upstreamFailures.inc([failure]);
    const by = cutBy(r);
    if (by !== undefined) this.cut.inc([by]);
  }
}

/**
 * What became of one finding (stale-contract, deprecated-operation): `deny` when it was the
 * enforced denial, `would-deny` when it was the denial audit mode let through, `warn` when it
 * only warned, even if another check then denied the request (a retry storm, say): an alert
 * on stale calls denied must not fire for those. `decided` is the decision's reason (a failed
 * forwarding's replaces it in the record: record.ts, forwardingFailed).
 */
function verdict(r: DecisionRecord, code: string, decided: string): 'deny' | 'would-deny' | 'warn' {
  if (r.decision !== 'deny' || decided !== code) return 'warn';
  return r.enforced ? 'deny' : 'would-deny';
}

/**
 * What the sidecar itself costs, under the names Prometheus clients use for every process,
 * so the pod's dashboards read it like any other: CPU, resident memory, the V8 heap. These
 * are the figures the benchmark budgets (README, Performance), here for the live sidecar.
 */
function processMetrics(r: Registry): void {
  const startSeconds = Math.round(performance.timeOrigin) / 1000;
  r.add(new Collected('process_cpu_seconds_total', 'CPU time (user and system) the driftguard process has used, in seconds.', 'counter', [], () => {
    const u = process.cpuUsage();
    return [[[], (u.user + u.system) / 1e6]];
  }));
  r.add(new Collected('process_resident_memory_bytes', 'Resident memory of the driftguard process, in bytes.', 'gauge', [], () => [[[], process.memoryUsage.rss()]]));
  r.add(new Collected('process_start_time_seconds', 'When the driftguard process started, in seconds since the Unix epoch.', 'gauge', [], () => [[[], startSeconds]]));
  // V8's own statistics: process.memoryUsage() would read the resident size from /proc as well.
  r.add(new Collected('nodejs_heap_used_bytes', 'V8 heap in use (live objects and garbage not yet collected), in bytes.', 'gauge', [], () => [[[], getHeapStatistics().used_heap_size]]));
  r.add(new Collected('nodejs_heap_size_total_bytes', 'V8 heap reserved, in bytes.', 'gauge', [], () => [[[], getHeapStatistics().total_heap_size]]));
}
