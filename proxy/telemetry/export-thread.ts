// The request thread's side of span export. Building a request's two spans and encoding them
// for OTLP was the largest single cost driftguard added to a request (README, Performance), and
// it all runs after the decision is made: so it runs on a worker thread (export-worker.ts),
// on the other core, and the request thread only hands over each request's span source, the
// decision record and a few facts, in batches (a structured clone, under 10 µs a request).
//
// Export never blocks or fails a request. At most maxQueueSize spans are on their way at any
// time (batched here, in a message, queued or being exported there); beyond that a span is
// dropped and counted at once as queue_full, as the SDK's processor does. If the export
// thread dies (out of its memory, say), the spans it held are counted as export_failed and a
// new one is started, at most once every RESTART_MS.

import { Worker } from 'node:worker_threads';
import type { TracesConfig } from './config.ts';
import type { SpanSource } from './spans.ts';
import { atMost } from '../lib/wait.ts';

/** Why spans were lost: the queue was full, the export failed, or the collector took them and rejected them (an OTLP partial success). */
export type DropCause = 'queue_full' | 'export_failed' | 'rejected';

export interface SpanCounts {
  exported: number;
  dropped: Record<DropCause, number>;
}

/** Counts before any span: also the counts of a tracer that exports nothing. */
export function noSpanCounts(): SpanCounts {
  return { exported: 0, dropped: { queue_full: 0, export_failed: 0, rejected: 0 } };
}

/** What the export thread is started with. */
export interface ExportSettings {
  readonly traces: TracesConfig;
  /** Longest wait for the last export at shutdown. */
  readonly shutdownFlushMs: number;
}

/** Request thread to export thread. */
export type ToExport =
  | { readonly type: 'spans'; readonly sources: readonly SpanSource[] }
  | { readonly type: 'shutdown' };

/** Export thread to request thread. */
export type FromExport =
  /** Spans finished with, since the last message: exported, or dropped and why. */
  | { readonly type: 'settled'; readonly exported: number; readonly queueFull: number; readonly exportFailed: number; readonly rejected: number }
  | { readonly type: 'warn'; readonly message: string }
  /** Shutdown: the last export is done or given up on; the thread ends next. */
  | { readonly type: 'flushed' };

/** Longest wait for the collector at shutdown: a pod being stopped should not wait on one that is not there. */
const SHUTDOWN_FLUSH_MS = 2_750;
/**
 * After its last export the thread ends by itself, unless a connection to a collector that is
 * down or hung (or the exporter's retry timer) keeps it alive: it is then ended this much later,
 * so that a stop takes at most 3 s with it (it took the backstop's 4 s every time).
 */
const EXIT_AFTER_FLUSH_MS = 250;

/**
 * Sources go to the export thread in messages of at most POST_SOURCES, or when the oldest has
 * waited POST_MS. A message is cloned on the request thread, under 10 µs a source, so about
 * 0.25 ms at most for one message, whatever the export batch size.
 */
const POST_SOURCES = 32;
const POST_MS = 10;
const RESTART_MS = 5_000;
const ENTRY = new URL(import.meta.url.endsWith('.ts') ? './export-worker.ts' : './export-worker.js', import.meta.url);

/**
 * What a warning is about: an export that failed (the collector), or the thread itself (it
 * failed, stopped, or could not be sent spans). The two are limited apart, so that a collector
 * outage's warnings do not hide the thread's stop.
 */
export type WarningAbout = 'export' | 'thread';

export interface ExportThreadOptions {
  /** The thread's entry module: export-worker.ts; tests give one that fails. */
  readonly entry?: URL;
  /** Least time between two starts of the thread. */
  readonly restartMs?: number;
  /** Longest wait for the collector at shutdown (SHUTDOWN_FLUSH_MS); tests give a shorter one. */
  readonly shutdownFlushMs?: number;
  /** The clock restartMs is counted on (performance.now); tests give one they move. */
  readonly now?: () => number;
}

export class ExportThread {
  readonly counts: SpanCounts = noSpanCounts();
  readonly #config: TracesConfig;
  readonly #warn: (message: string, about: WarningAbout) => void;
  readonly #entry: URL;
  readonly #restartMs: number;
  #worker?: Worker;
  #startedAt = -Infinity;
  #batch: SpanSource[] = [];
  /** Spans in #batch: a source makes one or two. */
  #batchSpans = 0;
  #timer?: NodeJS.Timeout;
  /** Spans taken and not yet settled (exported or dropped): batched, posted or exporting. */
  #inFlight = 0;
  #closing = false;
  /** Resolves shutdown's wait once the thread says its last export is done. */
  #flushed?: () => void;
  readonly #shutdownFlushMs: number;
  readonly #now: () => number;

  constructor(config: TracesConfig, warn: (message: string, about: WarningAbout) => void, options: ExportThreadOptions = {}) {
    this.#config = config;
    this.#warn = warn;
    this.#entry = options.entry ?? ENTRY;
    this.#restartMs = options.restartMs ?? RESTART_MS;
    this.#shutdownFlushMs = options.shutdownFlushMs ?? SHUTDOWN_FLUSH_MS;
    this.#now = options.now ?? (() => performance.now());
    // The thread starts with the first spans: none is started where none are sampled.
  }

  add(source: SpanSource): void {
    const spans = source.call ? 2 : 1;
    if (this.#closing) { this.counts.dropped.export_failed += spans; return; }
    if (this.#inFlight + spans > this.#config.maxQueueSize) { this.counts.dropped.queue_full += spans; return; }
    this.#inFlight += spans;
    this.#batch.push(source);
    this.#batchSpans += spans;
    if (this.#batch.length >= POST_SOURCES) this.#post();
    else if (!this.#timer) {
      this.#timer = setTimeout(() => { this.#timer = undefined; this.#post(); }, POST_MS);
      this.#timer.unref();
    }
  }

  #post(): void {
    if (this.#timer) { clearTimeout(this.#timer); this.#timer = undefined; }
    const sources = this.#batch;
    const spans = this.#batchSpans;
    if (sources.length === 0) return;
    this.#batch = [];
    this.#batchSpans = 0;
    const worker = this.#worker ?? this.#start();
    if (!worker) { this.#drop(spans); return; }
    try {
      worker.postMessage({ type: 'spans', sources } satisfies ToExport);
    } catch (err) {
      // A source that cannot be cloned is a bug, not a reason to fail the request.
      this.#drop(spans);
      this.#warn(`spans could not be sent to the export thread: ${(err as Error).message}`, 'thread');
    }
  }

  #drop(n: number): void {
    this.#inFlight -= n;
    this.counts.dropped.export_failed += n;
  }

  #start(): Worker | undefined {
    const now = this.#now();
    if (now - this.#startedAt < this.#restartMs) return undefined;
    this.#startedAt = now;
    const config = this.#config;
    let worker: Worker;
    try {
      worker = this.#spawn(config);
    } catch (err) {
      // No thread to be had (a pod's pids limit, RLIMIT_NPROC: ERR_WORKER_INIT_FAILED, EAGAIN):
      // thrown from the post timer it ended the process. The spans are dropped and counted,
      // and another start is tried no sooner than restartMs.
      this.#warn(`the span export thread could not be started (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); spans are dropped until it can be`, 'thread');
      return undefined;
    }
    // The thread must not keep the process alive on its own; shutdown() holds it while it flushes.
    worker.unref();
    worker.on('message', (m: FromExport) => this.#received(m));
    // Its exit follows an error: one warning for both, saying why it stopped.
    let failure: string | undefined;
    worker.on('error', (err) => { failure = err.message; });
    worker.on('exit', (code) => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      // What it held is lost; what is still batched here goes to the next thread.
      this.#drop(this.#inFlight - this.#batchSpans);
      if (this.#closing) return;
      this.#warn(`the span export thread stopped (exit code ${code}${failure !== undefined ? `: ${failure}` : ''}); the spans it held are dropped, and a new one starts with the next spans`, 'thread');
    });
    this.#worker = worker;
    return worker;
  }

  /** A new export thread for `config`. Throws when the OS gives no thread. */
  #spawn(config: TracesConfig): Worker {
    return new Worker(this.#entry, {
      workerData: { traces: config, shutdownFlushMs: this.#shutdownFlushMs } satisfies ExportSettings,
      // Its own heap limits, whatever the process's: room for its modules and a full queue of
      // spans (a few KiB each), and a small young generation, since most of what it
      // allocates, a batch's spans and their encoding, lives for one batch. A heap sized from
      // the machine's memory, as V8 does by default, is collected lazily and holds far more.
      resourceLimits: { maxOldGenerationSizeMb: 32 + Math.ceil(config.maxQueueSize * 4 / 1024), maxYoungGenerationSizeMb: 8 },
      // None of the process's command-line flags: the thread needs no loader (tests run under
      // tap's), and V8's options are the process's in any case.
      execArgv: [],
    });
  }

  #received(m: FromExport): void {
    switch (m.type) {
      case 'settled':
        this.counts.exported += m.exported;
        this.counts.dropped.queue_full += m.queueFull;
        this.counts.dropped.export_failed += m.exportFailed;
        this.counts.dropped.rejected += m.rejected;
        this.#inFlight -= m.exported + m.queueFull + m.exportFailed + m.rejected;
        return;
      case 'warn':
        this.#warn(m.message, 'export');
        return;
      case 'flushed':
        this.#flushed?.();
    }
  }

  /** Export what is on its way, waiting at most SHUTDOWN_FLUSH_MS for the collector, then stop the thread. */
  async shutdown(): Promise<void> {
    if (this.#closing) return;
    this.#post();
    this.#closing = true;
    const worker = this.#worker;
    if (!worker) return;
    worker.ref();
    // The thread flushes, reports what it settled and then ends by itself, which also delivers
    // what it wrote to stdout (the console exporter); terminate() would drop that. The timer
    // is the backstop: the thread gives up on the collector after SHUTDOWN_FLUSH_MS.
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const flushed = new Promise<void>((resolve) => { this.#flushed = resolve; });
    worker.postMessage({ type: 'shutdown' } satisfies ToExport);
    let answered = false;
    await atMost(Promise.race([exited, flushed]).then(() => { answered = true; }), this.#shutdownFlushMs + 1_000);
    // A thread that neither reported its flush nor ended is stuck (a loop, a blocked call): said,
    // since its spans are lost with it.
    if (!answered) this.#warn(`the span export thread did not finish its last export within ${this.#shutdownFlushMs + 1_000} ms and was ended; the spans it held are dropped`, 'thread');
    await atMost(exited, EXIT_AFTER_FLUSH_MS);
    this.#worker = undefined;
    this.#drop(this.#inFlight);
    await worker.terminate();
  }
}
