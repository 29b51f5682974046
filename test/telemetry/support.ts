// Test support for telemetry: a real OTLP/HTTP receiver on loopback (decoding what the real
// OTLP exporter sends, http/json or http/protobuf; the protocol is http/json unless the
// test process sets OTLP_PROTOCOL, as spans-protobuf.test.ts does), a driftguard started with
// the telemetry feature wired as proxy/run.ts wires it, and a capture of everything
// driftguard wrote (decision log, log lines, exported spans, admin answers) so a test can
// search it all for the tokens it used.

import { createServer, type Server, type ServerResponse } from 'node:http';
import { Server as GrpcServer, ServerCredentials, type ServiceDefinition, type handleUnaryCall } from '@grpc/grpc-js';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listen, close } from '../support/servers.ts';
import { startTest, writeRules, type Running } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { telemetry, type TelemetryFeature } from '../../proxy/telemetry/index.ts';
import { composeObservers, type Observer } from '../../proxy/observe.ts';
import { decodeTraces, encodeTraceResponse } from '../support/otlp.ts';

export interface OtlpValue { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number; arrayValue?: { values?: OtlpValue[] } }
interface OtlpKeyValue { key: string; value: OtlpValue }

export interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  traceState?: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  events: { name: string; attributes: Record<string, unknown> }[];
  status: { code: number; message?: string };
  resource: Record<string, unknown>;
}

export const KIND = { SERVER: 2, CLIENT: 3 } as const;
export const STATUS = { UNSET: 0, OK: 1, ERROR: 2 } as const;

function value(v: OtlpValue): unknown {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue !== undefined) return (v.arrayValue.values ?? []).map(value);
  return undefined;
}

function attributes(list: OtlpKeyValue[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const kv of list ?? []) out[kv.key] = value(kv.value);
  return out;
}

export type CollectorMode = 'ok' | 'hang' | 'refuse503';

export interface Collector {
  readonly url: string;
  readonly spans: ExportedSpan[];
  /** Raw request bodies, for searching. */
  readonly bodies: string[];
  requests: number;
  mode: CollectorMode;
  /** Spans in each export request, in order. */
  readonly perRequest: number[];
  /** When set, every answer is a partial success: so many spans rejected (OTLP `partialSuccess`), with this message. */
  rejecting?: { rejected: number; message: string };
  /** Wait until a span matches (or fail after timeoutMs). */
  waitFor(pred: (s: ExportedSpan) => boolean, timeoutMs?: number): Promise<ExportedSpan>;
  close(): Promise<void>;
}

/** An export request's spans, decoded (OTLP/JSON shape), into the collector's list. */
function received(c: Collector, body: { resourceSpans?: { resource?: { attributes?: OtlpKeyValue[] }; scopeSpans?: { spans?: any[] }[] }[] }): void {
  let n = 0;
  for (const rs of body.resourceSpans ?? []) {
    const resource = attributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        n++;
        c.spans.push({
          traceId: s.traceId, spanId: s.spanId, ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}),
          ...(s.traceState ? { traceState: s.traceState } : {}),
          name: s.name, kind: s.kind, attributes: attributes(s.attributes),
          events: (s.events ?? []).map((e: { name: string; attributes?: OtlpKeyValue[] }) => ({ name: e.name, attributes: attributes(e.attributes) })),
          status: { code: s.status?.code ?? 0, ...(s.status?.message ? { message: s.status.message } : {}) },
          resource,
        });
      }
    }
  }
  (c.perRequest as number[]).push(n);
}

/** A real OTLP/HTTP trace receiver (JSON or protobuf): POST /v1/traces. */
export async function collector(): Promise<Collector> {
  const hanging = new Set<ServerResponse>();
  const c = { spans: [] as ExportedSpan[], bodies: [] as string[], perRequest: [] as number[], requests: 0, mode: 'ok' as CollectorMode } as Collector & { url: string; close(): Promise<void> };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (b: Buffer) => chunks.push(b));
    req.on('end', () => {
      c.requests++;
      if (c.mode === 'hang') { hanging.add(res); return; }
      if (c.mode === 'refuse503') { res.writeHead(503).end(); return; }
      const type = String(req.headers['content-type']);
      const protobuf = type.startsWith('application/x-protobuf');
      if (req.method !== 'POST' || req.url !== '/v1/traces' || !(protobuf || type.startsWith('application/json'))) {
        res.writeHead(415).end(); return;
      }
      const bytes = Buffer.concat(chunks);
      // Protobuf bodies are kept as their text too: the strings in them are UTF-8 as sent.
      c.bodies.push(bytes.toString('utf8'));
      received(c, protobuf ? decodeTraces(bytes) : JSON.parse(bytes.toString('utf8')));
      if (protobuf) res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(encodeTraceResponse(c.rejecting));
      else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(c.rejecting ? { partialSuccess: { rejectedSpans: String(c.rejecting.rejected), errorMessage: c.rejecting.message } } : {}));
    });
  });
  const port = await listen(server);
  c.url = `http://127.0.0.1:${port}`;
  // Generous: the export thread starts a worker and loads the SDK first, and a span test
  // failed once on a heavily loaded machine with the 5 s this had. A wait, not a timed assertion.
  c.waitFor = async (pred, timeoutMs = 20_000) => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const found = c.spans.find(pred);
      if (found) return found;
      if (Date.now() > until) throw new Error(`no exported span matched within ${timeoutMs}ms (${c.spans.length} spans received)`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  c.close = async () => { for (const r of hanging) r.destroy(); await close(server); };
  return c;
}

/**
 * A real OTLP/gRPC trace receiver on loopback (@grpc/grpc-js, the library the exporter uses
 * too): TraceService/Export, decoded with the transcribed schema. It answers every export
 * (`mode` is not read); `rejecting` makes the answers partial successes, as over HTTP.
 */
export async function grpcCollector(): Promise<Collector & { url: string; close(): Promise<void> }> {
  const c = { spans: [] as ExportedSpan[], bodies: [] as string[], perRequest: [] as number[], requests: 0, mode: 'ok' as CollectorMode } as Collector & { url: string; close(): Promise<void> };
  const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const service: ServiceDefinition = {
    Export: {
      path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export', requestStream: false, responseStream: false,
      requestSerialize: bytes, requestDeserialize: (b: Buffer) => b, responseSerialize: bytes, responseDeserialize: (b: Buffer) => b,
    },
  };
  const exportCall: handleUnaryCall<Buffer, Uint8Array> = (call, callback) => {
    c.requests++;
    c.bodies.push(call.request.toString('utf8'));
    received(c, decodeTraces(call.request));
    callback(null, encodeTraceResponse(c.rejecting));
  };
  const server = new GrpcServer();
  server.addService(service, { Export: exportCall });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  c.url = `http://127.0.0.1:${port}`;
  c.waitFor = async () => { throw new Error('not used with the gRPC receiver'); };
  c.close = () => new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  return c;
}

export interface Started extends Running {
  readonly feature: TelemetryFeature;
  /** Log lines driftguard and telemetry wrote (JSON text). */
  readonly logs: string[];
  readonly logFile: string;
  /** Flush and stop telemetry, then read the decision log. */
  stop(): Promise<string>;
}

/**
 * Start driftguard with telemetry wired like proxy/run.ts (feature observer in, attach after
 * the listeners exist). `extraObserver` stands in for another feature module's observer.
 */
export async function startWithTelemetry(rules: Record<string, any>, env: Record<string, string> = {}, extraObserver?: Observer): Promise<Started> {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-telemetry-'));
  const logFile = join(dir, 'decisions.log');
  rules.telemetry ??= {};
  rules.telemetry.decisionLog ??= {};
  rules.telemetry.decisionLog.output ??= logFile;
  rules.telemetry.traces ??= {};
  rules.telemetry.traces.batch ??= { scheduledDelay: '50ms' };
  const logs: string[] = [];
  const log = (line: Record<string, unknown>) => { logs.push(JSON.stringify(line)); };
  const feature = await telemetry(loadRules(writeRules(rules, dir)), log, { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: process.env.OTLP_PROTOCOL ?? 'http/json', ...env });
  const observer = extraObserver ? composeObservers([feature.observer, extraObserver]) : feature.observer;
  const running = await startTest(rules, { observer, log });
  feature.attach!(running.dg);
  let stopped: Promise<string> | undefined;
  const stop = () => (stopped ??= (async () => {
    await running.close();
    await feature.shutdown!();
    return existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
  })());
  return { ...running, feature, logs, logFile, stop, close: async () => { await stop(); } };
}

export function traceparent(traceId: string, spanId: string, sampled = true): string {
  return `00-${traceId}-${spanId}-${sampled ? '01' : '00'}`;
}

export function randomHex(bytes: number): string {
  let s = '';
  for (let i = 0; i < bytes; i++) s += Math.floor(Math.random() * 256).toString(16).padStart(2, '0');
  return s;
}

/**
 * Wait until `check` holds, polling every 50 ms; fail after `timeoutMs`. 20 s by default, as the
 * collector's waitFor: what is waited for often comes through the export thread, whose start
 * took more than 5 s on a busy machine (export-thread.test.ts).
 */
export async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
