// Decision telemetry (issue 3): a trace of every decision, Prometheus metrics at GET /metrics,
// a JSON decision log, and recent decisions at GET /decisions, all made from one record per
// request (record.ts). Configured by the rules' `telemetry` section over the OTEL_* variables.

import type { Rules } from '../rules/types.ts';
import type { Feature, Log } from '../features.ts';
import type { Observer } from '../observe.ts';
import { telemetryConfig, type TelemetryConfig } from './config.ts';
import { tracing } from './tracing.ts';
import { Instruments } from './instruments.ts';
import { DecisionLog, REOPEN_MS } from './decision-log.ts';
import { Ring, decisionsHandler } from './recent.ts';
import { RequestObservation, type Sink } from './observation.ts';
import { CONTENT_TYPE } from './metrics.ts';

export { telemetryConfig, type TelemetryConfig };

/** Stops start-up with its message alone (cli.ts), as a rules problem does: no stack trace. */
function configError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ERR_CONFIG_INVALID' });
}

const HIT = ['hit'];
const MISS = ['miss'];

export interface TelemetryFeature extends Feature {
  readonly observer: Observer;
}

export async function telemetry(rules: Rules, log: Log, env: Readonly<Record<string, string | undefined>> = process.env): Promise<TelemetryFeature> {
  let config: TelemetryConfig;
  let decisionLog: DecisionLog;
  try {
    config = telemetryConfig(rules, env);
  } catch (err) {
    throw configError(`telemetry: ${(err as Error).message}`);
  }
  try {
    decisionLog = new DecisionLog(config.log.output, config.log.maxBufferBytes, {
      report: (failed, error) => log(failed
        ? { level: 'error', msg: config.log.output.kind === 'file'
          ? `the decision log file failed; lines wait for it (those past telemetry.decisionLog.maxBufferBytes are dropped and counted in driftguard_decision_log_dropped_total), and it is opened again every ${REOPEN_MS / 1000} s`
          : 'the decision log output failed; decision lines are dropped and counted in driftguard_decision_log_dropped_total', error }
        : { level: 'info', msg: 'the decision log output is written again' }),
    });
  } catch (err) {
    // The loader checked the path; this is the file changing between that check and here.
    throw configError(`${rules.source}: telemetry.decisionLog.output: cannot open the decision log: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const traces = tracing(config.traces, (error) => log({ level: 'warn', msg: 'span export failed; spans are dropped and counted in driftguard_spans_dropped_total', error }));
  const instruments = new Instruments();
  const sink: Sink = { tracing: traces, instruments, log: decisionLog, allowSampleRate: config.log.allowSampleRate, ring: new Ring(config.recent.size, config.recent.maxBytes) };
  return {
    observer: {
      begin: (ctx) => new RequestObservation(sink, ctx),
      tokenCache: (hit) => instruments.tokenCache.inc(hit ? HIT : MISS),
      unparsed: (reason) => instruments.unparsed.inc([reason]),
      dropped: (listener, cause) => instruments.dropped.inc([listener, cause]),
    },
    attach(d) {
      // Telemetry is configured once, at start (the export thread, the decision log's file,
      // the ring): a reload that changes the section is taken for everything else, and says
      // so, rather than leaving an operator to believe a new sample rate is in force.
      const atStart = JSON.stringify(rules.raw.telemetry ?? {});
      d.onSwap((g) => {
        if (JSON.stringify(g.rules.raw.telemetry ?? {}) === atStart) return;
        log({ level: 'warn', msg: 'telemetry settings changed by the reload take effect at the next restart; the ones from start-up stay in force', rules: g.rules.hash });
      });
      // /metrics exists only from here on, so the collected gauges always have a driftguard.
      instruments.collect(d, traces.counts, decisionLog);
      d.tables.set('recent_decisions', () => sink.ring.fill());
      d.tables.set('decision_log_buffer', () => decisionLog.fill());
      d.routes.add('GET', '/metrics', (_req, res) => {
        const text = instruments.registry.text();
        res.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
        res.end(text);
      });
      d.routes.add('GET', '/decisions', decisionsHandler(sink.ring, d.routes));
    },
    async shutdown() {
      await Promise.all([traces.shutdown(), decisionLog.close()]);
    },
  };
}
