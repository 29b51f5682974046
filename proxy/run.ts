// `driftguard run` and `driftguard demo`: start, reload, and stop gracefully.
// On SIGTERM: go on taking requests for the drain delay (not ready, each answer closing its
// connection), stop accepting, let in-flight requests finish within the grace period, flush
// telemetry, exit 0. Kubernetes sends SIGTERM to a native sidecar only after the app
// container has stopped, so in-flight requests are the app's last answers and it needs no
// delay; a regular container gets it as the pod starts terminating, with traffic still routed to it.

import { loadRules, type Overrides } from './rules/load.ts';
import type { Rules } from './rules/types.ts';
import { startDriftguard, type Driftguard } from './server.ts';
import { reloader, type Reloader } from './reload.ts';
import { runDemo } from './demo/demo.ts';
import { features } from './features.ts';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

function bound(server: Server): string {
  const a = server.address() as AddressInfo;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

export interface RunOptions {
  readonly graceMs: number;
  /** How long to go on taking requests after SIGTERM before the drain (0: none). */
  readonly drainDelayMs?: number;
}

// The log's reader may go away (EPIPE on a closed pipe): that must not end the sidecar. The
// decision log on stdout has its own listener, which also stops its writes.
process.stderr.on('error', () => {});
process.stdout.on('error', () => {});

function logLine(line: Record<string, unknown>): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...line }) + '\n');
}

// SIGUSR1 opens Node's inspector on 127.0.0.1:9229, which a pod's other containers share:
// anything there could then read the sidecar's memory, keys and tokens included. A listener
// keeps it closed (debug with --inspect). SIGUSR2 would end the process with no drain.
for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
  process.on(signal, () => logLine({ level: 'warn', msg: 'signal ignored', signal }));
}

export async function start(rules: Rules, file: string | undefined, overrides: Overrides): Promise<{ dg: Driftguard; reload?: Reloader; shutdown(graceMs: number, delayMs?: number): Promise<void> }> {
  const wired = await features(rules, logLine);
  const dg = startDriftguard(rules, { observer: wired.observer, deps: wired.deps, log: logLine });
  // The reloader exists before features attach, so that telemetry finds dg.reloadStatus there.
  const reload = file ? reloader(file, overrides, dg, logLine) : undefined;
  if (reload) {
    dg.reloadStatus = reload.status;
    dg.routes.add('POST', '/reload', async (req, res) => {
      // A reload only re-reads the file on disk, but each one parses the whole file on the
      // serving thread: it is an admin write, with the same guard as a revocation.
      const who = dg.routes.authorizeWrite(req, res);
      req.resume();
      if (who === undefined) return;
      const r = await reload.reload(`POST /reload by ${who}`);
      dg.routes.json(res, r.error ? 422 : 200, r);
    });
  } else {
    // The demo's rules are embedded: say so, rather than "no admin endpoint".
    dg.routes.add('POST', '/reload', (req, res) => {
      req.resume();
      dg.routes.problem(res, 409, 'Conflict', 'these rules are embedded (driftguard demo): there is no file to reload; run driftguard demo --rules FILE, or driftguard run --config FILE, to reload a rules file');
    });
  }
  wired.attach(dg);
  try {
    await dg.listening;
  } catch (err) {
    reload?.close();
    await dg.close().catch(() => {});
    // The features' files, timers and list sources too: nothing of a failed start lingers.
    await wired.shutdown().catch(() => {});
    throw err;
  }
  return {
    dg, ...(reload ? { reload } : {}),
    async shutdown(graceMs: number, delayMs = 0) {
      reload?.close();
      await dg.drain(graceMs, delayMs);
      // Telemetry last: the drained requests' spans and metrics are in what it flushes.
      await wired.shutdown();
    },
  };
}

/**
 * Time allowed after the grace period for closing connections and flushing telemetry (the
 * telemetry flush gives up after 3 s): a backstop, not a budget.
 */
const FLUSH_MS = 8_000;


function untilSignal(handlers: { term: () => Promise<void>; hup?: (() => void) | 'stop'; graceMs: number; drainDelayMs?: number }): Promise<number> {
  const drainDelayMs = handlers.drainDelayMs ?? 0;
  // Shutdown itself must not hang past the drain delay and grace period plus the flush allowance.
  const deadlineMs = drainDelayMs + handlers.graceMs + FLUSH_MS;
  return new Promise((resolve) => {
    let stopping = false;
    /** The stop's exit code, once it has finished ("stopped" is logged). */
    let stopped: number | undefined;
    const done = (code: number) => {
      stopped = code;
      resolve(code);
      // A handle someone forgot to close must not keep a stopped sidecar alive: exit anyway
      // once the event loop has had a moment (unref: a clean loop exits before this fires).
      setTimeout(() => process.exit(code), 1_000).unref();
    };
    const stop = (signal: string) => {
      // Already stopped, only not yet exited: nothing is left to cut short. Ctrl-C under make
      // reaches driftguard twice (the terminal's, then make's own to its child), and the second
      // turned a clean stop into "exiting without waiting" and exit 1.
      if (stopped !== undefined) process.exit(stopped);
      if (stopping) {
        // A second signal (Ctrl-C twice) means now.
        logLine({ level: 'warn', msg: 'second signal; exiting without waiting', signal });
        process.exit(1);
      }
      stopping = true;
      logLine({ level: 'info', msg: 'stopping', signal, graceMs: handlers.graceMs, ...(drainDelayMs ? { drainDelayMs } : {}) });
      const deadline = setTimeout(() => {
        logLine({ level: 'error', msg: 'shutdown did not finish in time; exiting', deadlineMs });
        process.exit(1);
      }, deadlineMs);
      deadline.unref();
      handlers.term().then(
        () => { clearTimeout(deadline); logLine({ level: 'info', msg: 'stopped' }); done(0); },
        (err: Error) => { clearTimeout(deadline); logLine({ level: 'error', msg: 'shutdown failed', error: err.message }); done(1); },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    const hup = handlers.hup;
    if (hup === 'stop') process.on('SIGHUP', () => stop('SIGHUP'));
    else if (hup) process.on('SIGHUP', hup);
  });
}

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

export async function run(file: string, overrides: Overrides, options: RunOptions): Promise<number> {
  // A named pipe in the file's place is refused by the loader, here and at each reload: each
  // read would wait for a writer with every request held behind it (`check` reads one once).
  const rules = loadRules(file, overrides);
  // Start-up can take seconds (keys, a revocation list URL). A signal meanwhile would get
  // Node's default action: SIGHUP killed the process, SIGTERM skipped the graceful stop. They
  // are held and handled once driftguard runs: one reload, or a stop with nothing in flight.
  const early = new Set<(typeof SIGNALS)[number]>();
  const hold = (signal: (typeof SIGNALS)[number]) => {
    // A second stop signal exits at once, as it does while draining: an operator (or a
    // kubelet) that asked twice does not wait for a start-up that may take a minute.
    if (signal !== 'SIGHUP' && (early.has('SIGTERM') || early.has('SIGINT'))) {
      logLine({ level: 'warn', msg: 'second stop signal during start-up; exiting now', signal });
      process.exit(1);
    }
    early.add(signal);
    logLine({ level: 'info', msg: 'signal during start-up; handled once started', signal });
  };
  const holders = SIGNALS.map((signal) => [signal, () => hold(signal)] as const);
  for (const [signal, h] of holders) process.on(signal, h);
  let s: Awaited<ReturnType<typeof start>>;
  try {
    s = await start(rules, file, overrides);
  } finally {
    for (const [signal, h] of holders) process.off(signal, h);
  }
  // The bound addresses, not the configured ones: with port 0 this is the only way to learn them.
  logLine({ level: 'info', msg: 'driftguard listening', listen: bound(s.dg.traffic), admin: bound(s.dg.admin), ...(s.dg.probes ? { probes: bound(s.dg.probes) } : {}), upstream: rules.proxy.upstream, mode: rules.proxy.mode, rules: rules.hash });
  const stopped = untilSignal({
    term: () => s.shutdown(options.graceMs, options.drainDelayMs),
    hup: () => { void s.reload?.reload('SIGHUP'); },
    graceMs: options.graceMs,
    ...(options.drainDelayMs ? { drainDelayMs: options.drainDelayMs } : {}),
  });
  // The handlers are in place now: replay what came during start-up, a stop before a reload.
  const first = early.has('SIGTERM') ? 'SIGTERM' : early.has('SIGINT') ? 'SIGINT' : early.has('SIGHUP') ? 'SIGHUP' : undefined;
  if (first) process.emit(first, first);
  return stopped;
}

/** The demo's grace period: a terminal's Ctrl-C, not a pod's rollout. */
const DEMO_GRACE_MS = 2_000;

export async function demo(): Promise<number> {
  // The demo has no collector: without a choice of exporter it would log a failed export a
  // minute. OTEL_TRACES_EXPORTER=console (or otlp with a collector) shows the spans.
  const tracesChosen = process.env.OTEL_TRACES_EXPORTER !== undefined;
  if (!tracesChosen) process.env.OTEL_TRACES_EXPORTER = 'none';
  const stop = await runDemo(async (rules, file) => {
    const s = await start(rules, file, {});
    return { close: () => s.shutdown(DEMO_GRACE_MS) };
  });
  if (!tracesChosen) console.log('Traces: not exported (no collector here). Run OTEL_TRACES_EXPORTER=console make demo to print them, or set OTEL_EXPORTER_OTLP_ENDPOINT with OTEL_TRACES_EXPORTER=otlp.');
  // The demo runs in a terminal: SIGHUP is its hang-up, a graceful stop, so that a closed
  // terminal does not leave it holding its ports (Node's default action exited 129 without
  // one). A --rules file reloads when it changes and on POST /reload.
  return untilSignal({ term: stop, hup: 'stop', graceMs: DEMO_GRACE_MS });
}
