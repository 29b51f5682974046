// `driftguard run` and `driftguard demo`: start, reload, and stop gracefully.
// On SIGTERM: stop accepting, let in-flight requests finish within the grace period,
// flush telemetry, exit 0. Kubernetes sends SIGTERM to a native sidecar only after the app
// container has stopped, so in-flight requests are the app's last answers.

import { loadRules, type Overrides } from './rules/load.ts';
import type { Rules } from './rules/types.ts';
import { startDriftguard, type Driftguard } from './server.ts';
import { reloader, type Reloader } from './reload.ts';
import { runDemo } from './demo/demo.ts';
import { features } from './features.ts';

export interface RunOptions {
  readonly graceMs: number;
}

function logLine(line: Record<string, unknown>): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...line }) + '\n');
}

export async function start(rules: Rules, file: string | undefined, overrides: Overrides): Promise<{ dg: Driftguard; reload?: Reloader; shutdown(graceMs: number): Promise<void> }> {
  const wired = await features(rules, logLine);
  const dg = startDriftguard(rules, { observer: wired.observer, deps: wired.deps, log: logLine });
  wired.attach(dg);
  await dg.listening;
  const reload = file ? reloader(file, overrides, dg, logLine) : undefined;
  if (reload) {
    dg.routes.add('POST', '/reload', async (_req, res) => {
      const r = await reload.reload('POST /reload');
      dg.routes.json(res, r.error ? 422 : 200, r);
    });
    dg.reloadStatus = reload.status;
  }
  return {
    dg, ...(reload ? { reload } : {}),
    async shutdown(graceMs: number) {
      reload?.close();
      await dg.drain(graceMs);
      await wired.shutdown();
    },
  };
}

function untilSignal(handlers: { term: () => Promise<void>; hup?: () => void }): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logLine({ level: 'info', msg: 'stopping', signal });
      handlers.term().then(() => resolve(0), (err: Error) => { logLine({ level: 'error', msg: 'shutdown failed', error: err.message }); resolve(1); });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    if (handlers.hup) process.on('SIGHUP', handlers.hup);
  });
}

export async function run(file: string, overrides: Overrides, options: RunOptions): Promise<number> {
  const rules = loadRules(file, overrides);
  const s = await start(rules, file, overrides);
  logLine({ level: 'info', msg: 'driftguard listening', listen: rules.proxy.listen, admin: rules.proxy.admin, upstream: rules.proxy.upstream, mode: rules.proxy.mode, rules: rules.hash });
  return untilSignal({
    term: () => s.shutdown(options.graceMs),
    hup: () => { void s.reload?.reload('SIGHUP'); },
  });
}

export async function demo(): Promise<number> {
  let shutdown: ((graceMs: number) => Promise<void>) | undefined;
  const stop = await runDemo(async (rules) => {
    const s = await start(rules, undefined, {});
    shutdown = s.shutdown;
    return { close: () => s.shutdown(2_000) };
  });
  void shutdown;
  return untilSignal({ term: stop });
}
