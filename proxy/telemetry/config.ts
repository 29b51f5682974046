// The telemetry settings in force: the rules file's `telemetry` section (already validated by
// rules/schema.json, defaults applied) over the standard OTEL_* environment variables over
// built-in defaults. Read once at start-up; nothing here runs per request.

import { accessSync, constants, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Rules } from '../rules/types.ts';
import { MAX_TIMER_MS, TIMER_TOO_LONG, parseDuration } from '../rules/durations.ts';
import { addRulesValidator, readByRules } from '../rules/load.ts';

/**
 * Spans per export over http/protobuf: the SDK's 512. Each export is an HTTP request with a
 * fixed cost on the export thread (about 0.5 ms of CPU here, measured), so 64-span batches
 * cost about 15 µs of CPU a request more than 512-span ones at 4,000 requests/s. 64 was the
 * default while a batch was encoded all at once when exported: a 512-span batch then held
 * the thread's core for milliseconds, and p99 at one connection was worse with it (A/B at
 * ef27d13). Spans are now encoded as they reach the thread (otlp-proto.ts, preEncode), and a
 * batch goes out in requests of at most MAX_EXPORT_BYTES (export.ts).
 */
const DEFAULT_EXPORT_BATCH = 512;
/**
 * Over http/json and gRPC the SDK encodes the whole batch at once, when it is exported, and
 * no request is split by size: 64 spans, as before (a JSON span of driftguard's is about
 * 2.9 KB, so a 512-span batch is over 1 MiB).
 */
const DEFAULT_EXPORT_BATCH_SDK_ENCODED = 64;

export type TracesExporter = 'otlp' | 'console' | 'none';
export type OtlpProtocol = 'http/protobuf' | 'http/json' | 'grpc';
export type SamplerName = 'always_on' | 'always_off' | 'traceidratio' | 'parentbased_always_on' | 'parentbased_always_off' | 'parentbased_traceidratio';

export interface TracesConfig {
  readonly exporter: TracesExporter;
  readonly protocol: OtlpProtocol;
  /** Full URL of the traces endpoint, or undefined to let the exporter read OTEL_* itself. */
  readonly url?: string;
  readonly serviceName: string;
  readonly sampler: SamplerName;
  readonly samplerArg: number;
  readonly exportTimeoutMs: number;
  readonly maxQueueSize: number;
  /** Bytes of spans encoded ahead (http/protobuf) held at most on the export thread. */
  readonly maxQueueBytes: number;
  readonly maxExportBatchSize: number;
  readonly scheduledDelayMs: number;
}

export type LogOutput = { readonly kind: 'stdout' | 'stderr' | 'none' } | { readonly kind: 'file'; readonly file: string };

export interface TelemetryConfig {
  readonly traces: TracesConfig;
  readonly log: { readonly output: LogOutput; readonly allowSampleRate: number; readonly maxBufferBytes: number };
  readonly recent: { readonly size: number; readonly maxBytes: number };
}

/**
 * The raw section as the loader leaves it: rules/schema.json supplies every default (sections
 * default to {}); the trace fields stay optional because the OTEL_* variables decide them.
 */
interface RawTelemetry {
  traces: {
    exporter?: TracesExporter; protocol?: OtlpProtocol; endpoint?: string; serviceName?: string;
    sampler?: SamplerName; samplerArg?: number; exportTimeout?: string;
    batch: { maxQueueSize?: number; maxQueueBytes: number; maxExportBatchSize?: number; scheduledDelay?: string };
  };
  decisionLog: { output: string; allowSampleRate: number; maxBufferBytes: number };
  recent: { size: number; maxBytes: number };
}

type Env = Readonly<Record<string, string | undefined>>;

const EXPORTERS: readonly TracesExporter[] = ['otlp', 'console', 'none'];
const PROTOCOLS: readonly OtlpProtocol[] = ['http/protobuf', 'http/json', 'grpc'];
const SAMPLERS: readonly SamplerName[] = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'];

/**
 * OTEL_RESOURCE_ATTRIBUTES as the SDK's detector parses it: comma-separated key=value, one =
 * each, percent-encoded, at most 255 characters a key or value. `bad`: the first entry that is
 * not (1-based): the SDK then drops every attribute of the variable.
 */
function resourceAttributes(env: Env): { entries: [string, string][]; bad?: number } {
  const entries: [string, string][] = [];
  const list = str(env, 'OTEL_RESOURCE_ATTRIBUTES')?.split(',') ?? [];
  for (const [i, entry] of list.entries()) {
    if (entry.trim() === '') continue;
    const parts = entry.split('=');
    let pair: [string, string] | undefined;
    try { pair = parts.length === 2 ? [decodeURIComponent(parts[0]!.trim()), decodeURIComponent(parts[1]!.trim())] : undefined; } catch { pair = undefined; }
    if (!pair || pair[0] === '' || pair[0].length > 255 || pair[1].length > 255) return { entries, bad: i + 1 };
    entries.push(pair);
  }
  return { entries };
}

/** service.name as OTEL_RESOURCE_ATTRIBUTES sets it: the last one, as the SDK keeps it. */
function serviceNameAttribute(env: Env): string | undefined {
  return resourceAttributes(env).entries.findLast(([k]) => k === 'service.name')?.[1] || undefined;
}

function str(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v ? v : undefined;
}

/**
 * A number from an OTEL_* variable, within the bounds the rules' own field has: one that is not
 * (`ten`, `-5`, `1.5` for a count) stops start-up like any bad value, rather than leave the
 * default in force while the operator believes theirs is.
 */
function num(env: Env, name: string, bounds: { min?: number; max?: number; integer?: boolean } = {}): number | undefined {
  const v = str(env, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  const { min = 0, max = Number.MAX_SAFE_INTEGER, integer = false } = bounds;
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new TypeError(`${name}=${JSON.stringify(v)}: must be ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}`);
  }
  return n;
}

/** Bad OTEL_* values are configuration errors like bad rules: they stop start-up, naming the variable. */
function oneOf<T extends string>(env: Env, name: string, allowed: readonly T[], list = false): T | undefined {
  const v = str(env, name);
  if (v === undefined) return undefined;
  // A list variable (OTEL_TRACES_EXPORTER): driftguard exports to its first entry only.
  const first = list ? v.split(',')[0]!.trim() : v;
  if (!(allowed as readonly string[]).includes(first)) throw new TypeError(`${name}=${JSON.stringify(v)}: must be one of ${allowed.join(', ')}`);
  return first as T;
}

const EXPORT_TIMEOUT_ZERO = 'must be more than 0 (every export would time out at once and every span be dropped)';
/**
 * An OTEL_* timeout is a number of milliseconds, not rounded as the rules' durations are (0.4ms
 * there is 0, and refused): 0.4 was taken, and every export then failed.
 */
const EXPORT_TIMEOUT_UNDER_1MS = 'must be at least 1 (milliseconds; under 1 ms every export would time out at once and every span be dropped)';
/**
 * The export timeout's ceiling. The export thread waits a little longer than it (its own
 * backstops add up to 2.5 s), and a wait past MAX_TIMER_MS fires at once: near that limit every
 * export that succeeded was counted as failed. An export held for an hour is no export anyway.
 */
const MAX_EXPORT_TIMEOUT_MS = 3_600_000;
const EXPORT_TIMEOUT_TOO_LONG = 'must be at most 1h';

/** What is wrong with a delay that becomes a timer: above MAX_TIMER_MS, or an export timeout above 1h or under 1 ms. */
function delayProblem(ms: number, exportTimeout: boolean): string | undefined {
  if (exportTimeout && ms > MAX_EXPORT_TIMEOUT_MS) return EXPORT_TIMEOUT_TOO_LONG;
  if (ms > MAX_TIMER_MS) return TIMER_TOO_LONG;
  if (exportTimeout && ms === 0) return EXPORT_TIMEOUT_ZERO;
  if (exportTimeout && ms < 1) return EXPORT_TIMEOUT_UNDER_1MS;
  return undefined;
}

/**
 * The export timeout in effect: the rules' field, else the variable that sets it (the traces
 * one wins), else 10 s; refused (delayProblem) naming the one it came from.
 */
function exportTimeoutMs(fromRules: string | undefined, env: Env): number {
  if (fromRules !== undefined) return timer('telemetry.traces.exportTimeout', parseDuration(fromRules), true);
  for (const name of ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', 'OTEL_EXPORTER_OTLP_TIMEOUT']) {
    const ms = num(env, name);
    if (ms !== undefined) return timer(name, ms, true);
  }
  return 10_000;
}

/** A delay from the rules or an OTEL_* variable, refused (delayProblem) naming both. */
function timer(name: string, ms: number, exportTimeout = false): number {
  const problem = delayProblem(ms, exportTimeout);
  if (problem !== undefined) throw new TypeError(`${name}: ${problem}`);
  return ms;
}

/**
 * The OTEL_* variables the exporter reads itself, checked here so that a bad one stops start-up
 * naming the variable (never its value: headers carry API keys) instead of failing every
 * export with another cause (a CA file that does not exist read as "self-signed certificate").
 */
function exporterVariables(env: Env, readFiles: boolean): void {
  for (const name of ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS']) {
    const v = str(env, name);
    if (v === undefined) continue;
    v.split(',').forEach((entry, i) => {
      if (entry.trim() === '') return; // a trailing comma
      const eq = entry.indexOf('=');
      let key = '';
      let value = '';
      try { key = decodeURIComponent(entry.slice(0, eq).trim()); value = decodeURIComponent(entry.slice(eq + 1)); } catch { throw new TypeError(`${name}: entry ${i + 1} is not valid percent-encoding`); }
      if (eq <= 0 || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(key)) throw new TypeError(`${name}: entry ${i + 1} is not key=value with a header name for its key`);
      if (/[\r\n\0]/.test(value)) throw new TypeError(`${name}: entry ${i + 1}'s value holds a line break or NUL`);
    });
  }
  for (const name of ['OTEL_EXPORTER_OTLP_CERTIFICATE', 'OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE', 'OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE', 'OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE', 'OTEL_EXPORTER_OTLP_CLIENT_KEY', 'OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY']) {
    const v = str(env, name);
    if (v === undefined || !readFiles) continue;
    try { accessSync(v, constants.R_OK); } catch (err) { throw new TypeError(`${name}: cannot read ${v}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`); }
  }
  // The exporter drops any other value with a warning nobody sees, and sends uncompressed.
  for (const name of ['OTEL_EXPORTER_OTLP_COMPRESSION', 'OTEL_EXPORTER_OTLP_TRACES_COMPRESSION']) {
    const v = str(env, name);
    if (v !== undefined && v.trim() !== 'gzip' && v.trim() !== 'none') throw new TypeError(`${name}=${JSON.stringify(v.slice(0, 32))}: must be gzip or none (lowercase)`);
  }
  const { bad } = resourceAttributes(env);
  if (bad !== undefined) throw new TypeError(`OTEL_RESOURCE_ATTRIBUTES: entry ${bad} is not key=value (one =, percent-encoded, at most 255 characters each): the SDK would drop every attribute of the variable`);
}

/**
 * OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, when the rules name no endpoint: checked like the
 * rules' own, so that `collector:4318` over http, or a typo, stops start-up naming the variable
 * instead of failing every export (or sending spans to the default endpoint). Over grpc, what
 * its exporter takes: a URL, unix: or dns:, or a host[:port] it reads as https://. Not quoted,
 * as a URL may carry a credential.
 */
function endpointVariable(env: Env, name: string, protocol: OtlpProtocol): void {
  const v = str(env, name);
  if (v === undefined) return;
  if (protocol === 'grpc') {
    let ok = /^(unix|dns):/.test(v);
    if (!ok) { try { ok = ['http:', 'https:'].includes(new URL(v).protocol); } catch { ok = false; } }
    if (!ok) { try { ok = new URL(`https://${v}`).host !== ''; } catch { ok = false; } }
    if (!ok) throw new TypeError(`${name}: must be a URL, host:port or unix: for grpc`);
    return;
  }
  let url: URL;
  try { url = new URL(v); } catch { throw new TypeError(`${name}: is not a URL`); }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`${name}: must be an http:// or https:// URL`);
}

/**
 * Where the decision log would fail to open: a directory, a file it may not write, or a
 * folder that does not exist. Checked without creating anything, so `driftguard check` leaves
 * no file behind; DecisionLog opens it at start.
 */
function unwritable(file: string): string | undefined {
  // A path too long, a loop of links, a parent that cannot be searched: a problem, not a throw.
  try { return unwritableAt(file); } catch (err) { return `${file} cannot be used (${(err as NodeJS.ErrnoException).code ?? (err as Error).name})`; }
}

function unwritableAt(file: string): string | undefined {
  const at = statSync(file, { throwIfNoEntry: false });
  if (at?.isDirectory()) return `${file} is a directory`;
  // Opening a named pipe for writing waits for a reader: start-up hung there, deaf to SIGTERM,
  // and a pod whose reader starts after the sidecar never started. A pipe is what stdout is for.
  if (at && !at.isFile() && !at.isCharacterDevice()) return `${file} is not a regular file (a named pipe or socket): write to a file, or use output: stdout and pipe that`;
  const target = at ? file : dirname(file);
  if (!at && !statSync(target, { throwIfNoEntry: false })?.isDirectory()) return `the folder ${target} does not exist`;
  try { accessSync(target, constants.W_OK); } catch { return `${target} is not writable`; }
  return undefined;
}

/**
 * The rules' own telemetry values that the schema cannot judge, reported like every rules
 * problem (file:line: field) by `check`, at start and on a reload. OTEL_* variables are the
 * environment's, not the file's: telemetryConfig refuses those at start, naming the variable.
 */
function validateTelemetry(raw: Readonly<Record<string, unknown>>, fail: (path: (string | number)[], message: string) => void, base: string, named: readonly string[]): void {
  const section = raw.telemetry as RawTelemetry | undefined;
  if (!section) return;
  const delays: [(string | number)[], string | undefined, boolean][] = [
    [['telemetry', 'traces', 'exportTimeout'], section.traces?.exportTimeout, true],
    [['telemetry', 'traces', 'batch', 'scheduledDelay'], section.traces?.batch?.scheduledDelay, false],
  ];
  for (const [path, text, exportTimeout] of delays) {
    if (text === undefined) continue;
    // The schema's pattern lets through what only the parser refuses (`PT`, `P1DT`).
    let ms: number;
    try { ms = parseDuration(text); } catch (err) { fail(path, (err as Error).message); continue; }
    const problem = delayProblem(ms, exportTimeout);
    if (problem !== undefined) fail(path, problem);
  }
  const endpoint = section.traces?.endpoint;
  if (endpoint !== undefined) {
    // Not quoted: the exporter would quote it in every failure it logs, userinfo and all.
    let url: URL | undefined;
    try { url = new URL(endpoint); } catch { fail(['telemetry', 'traces', 'endpoint'], 'is not a URL'); }
    if (url && (url.username || url.password)) fail(['telemetry', 'traces', 'endpoint'], 'must carry no credentials: put them in OTEL_EXPORTER_OTLP_HEADERS');
  }
  const out = section.decisionLog?.output;
  if (out !== undefined && out !== 'stdout' && out !== 'stderr' && out !== 'none') {
    const file = resolve(base, out);
    // Appended to on every request, anonymous ones too: named by mistake, the rules file (or a
    // key set, the revocation list, journal or admin credentials) was broken at the next start.
    const revocation = (raw.revocation ?? {}) as { file?: unknown; journal?: unknown; adminCredentialFile?: unknown };
    const others = [revocation.file, revocation.journal, revocation.adminCredentialFile].filter((f): f is string => typeof f === 'string').map((f) => resolve(base, f));
    const shared = readByRules(file, [...named, ...others], 'decision log');
    if (shared !== undefined) fail(['telemetry', 'decisionLog', 'output'], shared);
    else {
      const problem = unwritable(file);
      if (problem) fail(['telemetry', 'decisionLog', 'output'], `cannot open the decision log: ${problem}`);
    }
  }
}

// Registered once at import, like the lifecycle sections: the loader checks it on every load.
addRulesValidator(validateTelemetry);

/**
 * The traces' settings: each from the rules, else its OTEL_* variable, else the default.
 * readFiles: whether the certificate files the variables name are on this machine to read.
 */
function tracesConfig(t: RawTelemetry['traces'], env: Env, readFiles = true): TracesConfig {
  const protocol = t.protocol ?? oneOf(env, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', PROTOCOLS) ?? oneOf(env, 'OTEL_EXPORTER_OTLP_PROTOCOL', PROTOCOLS) ?? 'http/protobuf';
  // A base endpoint from the rules file follows OTEL_EXPORTER_OTLP_ENDPOINT's rule: http
  // protocols append the signal path. Without one, the exporter reads the env itself.
  const url = t.endpoint === undefined ? undefined
    : protocol === 'grpc' ? t.endpoint : t.endpoint.replace(/\/+$/, '') + '/v1/traces';
  const sampler = t.sampler ?? oneOf(env, 'OTEL_TRACES_SAMPLER', SAMPLERS) ?? 'parentbased_always_on';
  const samplerArg = t.samplerArg ?? num(env, 'OTEL_TRACES_SAMPLER_ARG', { max: 1 }) ?? 1;
  const maxQueueSize = t.batch.maxQueueSize ?? num(env, 'OTEL_BSP_MAX_QUEUE_SIZE', { min: 1, max: 1_000_000, integer: true }) ?? 4096;
  // OTEL_SDK_DISABLED=true: no span is exported (trace context still goes on, as with none).
  const disabled = str(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true';
  const traces: TracesConfig = {
    exporter: t.exporter ?? (disabled ? 'none' : undefined) ?? oneOf(env, 'OTEL_TRACES_EXPORTER', EXPORTERS, true) ?? 'otlp',
    protocol,
    ...(url !== undefined ? { url } : {}),
    // As the SDK's specification orders them: the rules, OTEL_SERVICE_NAME, a service.name in
    // OTEL_RESOURCE_ATTRIBUTES, and only then driftguard's default.
    serviceName: t.serviceName ?? str(env, 'OTEL_SERVICE_NAME') ?? serviceNameAttribute(env) ?? 'driftguard',
    sampler,
    samplerArg,
    exportTimeoutMs: exportTimeoutMs(t.exportTimeout, env),
    maxQueueSize,
    maxQueueBytes: t.batch.maxQueueBytes,
    maxExportBatchSize: Math.min(maxQueueSize, t.batch.maxExportBatchSize ?? num(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', { min: 1, max: 100_000, integer: true }) ?? (protocol === 'http/protobuf' ? DEFAULT_EXPORT_BATCH : DEFAULT_EXPORT_BATCH_SDK_ENCODED)),
    scheduledDelayMs: timer('telemetry.traces.batch.scheduledDelay (or OTEL_BSP_SCHEDULE_DELAY)', t.batch.scheduledDelay !== undefined ? parseDuration(t.batch.scheduledDelay) : num(env, 'OTEL_BSP_SCHEDULE_DELAY') ?? 1_000),
  };
  if (traces.exporter === 'otlp') exporterVariables(env, readFiles);
  // The endpoint variable in effect only (the traces one wins); over http only while the rules
  // name no endpoint (theirs replaces it), a gRPC one whatever the rules say.
  if (traces.exporter === 'otlp' && (t.endpoint === undefined || protocol === 'grpc')) {
    endpointVariable(env, str(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT') !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT', protocol);
  }
  return traces;
}

/**
 * Throws as start-up would for an OTEL_* variable driftguard refuses, with rules that set no
 * trace field (every value from the variables): the injector's check of the literal values it
 * puts in every sidecar's environment, where one bad value would stop every opted-in pod's.
 * The files a variable names are the sidecar's, not this process's: not read.
 */
export function checkTelemetryEnvironment(env: Env): void {
  tracesConfig({ batch: { maxQueueBytes: 0 } }, env, false);
}

export function telemetryConfig(rules: Rules, env: Env = process.env): TelemetryConfig {
  const raw = rules.raw.telemetry as RawTelemetry;
  const traces = tracesConfig(raw.traces, env);
  const l = raw.decisionLog;
  const out = l.output;
  const output: LogOutput = out === 'stdout' || out === 'stderr' || out === 'none'
    ? { kind: out }
    : { kind: 'file', file: resolve(dirname(rules.source), out) };
  return {
    traces,
    log: { output, allowSampleRate: l.allowSampleRate, maxBufferBytes: l.maxBufferBytes },
    recent: { size: raw.recent.size, maxBytes: raw.recent.maxBytes },
  };
}
