// driftguard as a real subprocess (`node proxy/cli.ts run --config FILE`), the way a pod runs
// it: signals, exit codes and file watching are only real in a process of its own. Its JSON
// log lines are parsed as they arrive; everything it writes is kept so that tests can search
// it for secrets.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../proxy/cli.ts', import.meta.url));

export interface Subprocess {
  readonly child: ChildProcess;
  /** JSON log lines from stderr, in order. */
  readonly lines: Record<string, any>[];
  /** Everything written to stdout and stderr. */
  output(): string;
  /** http://127.0.0.1:port of the traffic and admin listeners (from the "listening" line). */
  readonly url: string;
  readonly admin: string;
  /** Resolves to the first log line (from now or earlier) that `match` accepts. */
  waitFor(match: (line: Record<string, any>) => boolean, timeoutMs?: number): Promise<Record<string, any>>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL if still running (teardown). */
  kill(): void;
}

export async function runDriftguard(config: string, args: string[] = [], env: Record<string, string> = {}): Promise<Subprocess> {
  const child = spawn(process.execPath, [CLI, 'run', '--config', config, ...args], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, any>[] = [];
  let out = '';
  let pending = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => {
    const text = c.toString();
    out += text;
    pending += text;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try { lines.push(JSON.parse(line)); } catch { /* not a log line */ }
    }
    for (const w of waiters) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { for (const w of waiters) w(); resolve({ code, signal }); });
  });
  let gone = false;
  void exited.then(() => { gone = true; });

  const waitFor = (match: (line: Record<string, any>) => boolean, timeoutMs = 10_000) => new Promise<Record<string, any>>((resolve, reject) => {
    const check = () => {
      const hit = lines.find(match);
      if (hit) { done(); resolve(hit); return; }
      if (gone || child.exitCode !== null) { done(); reject(new Error(`driftguard exited before the expected log line:\n${out}`)); }
    };
    const timer = setTimeout(() => { done(); reject(new Error(`no expected log line within ${timeoutMs}ms:\n${out}`)); }, timeoutMs);
    const done = () => { clearTimeout(timer); waiters.delete(check); };
    waiters.add(check);
    check();
  });

  const kill = () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  let listening: Record<string, any>;
  try {
    listening = await waitFor((l) => l.msg === 'driftguard listening');
  } catch (err) { kill(); throw err; }
  return {
    child, lines, output: () => out, waitFor, exited, kill,
    url: `http://${listening.listen}`, admin: `http://${listening.admin}`,
  };
}

export interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** A signal to send once what the CLI wrote to stderr so far satisfies `when`. */
export interface SignalStep { readonly when: (stderr: string) => boolean; readonly signal: NodeJS.Signals }

/**
 * Run the CLI to completion, or until `until` says to stop it with SIGTERM; `signals` are sent
 * in turn, each once its condition holds.
 */
export function cli(args: string[], o: { until?: (stderr: string) => boolean; signals?: readonly SignalStep[]; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    // Without tap's NODE_OPTIONS (its process-info loader triples each start-up here).
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none', ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const steps: SignalStep[] = [...(o.signals ?? []), ...(o.until ? [{ when: o.until, signal: 'SIGTERM' as const }] : [])];
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`driftguard ${args.join(' ')} did not finish`)); }, 20_000);
    child.stdout.on('data', (d: Buffer) => { stdout += d; });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d;
      while (steps.length && steps[0]!.when(stderr)) child.kill(steps.shift()!.signal);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}
