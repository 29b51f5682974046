// The load generator: wrk from Debian's packages, one thread, driven by mix.lua.
// wrk is C: at the rates here it takes a fraction of the core autocannon (Node) would,
// which matters on a 2-core machine where the load generator shares the CPUs with the
// target and the upstream.

import { spawn, execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('./mix.lua', import.meta.url));

export interface WrkResult {
  /** Answered. */
  readonly requests: number;
  /** Written: beyond one in flight per connection at the end, the rest stalled unanswered. */
  readonly issued: number;
  readonly durationUs: number;
  readonly bytes: number;
  readonly errors: { connect: number; read: number; write: number; status: number; timeout: number };
  /** Microseconds. */
  readonly latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  /** One connection with `raw`: each request's time from its write to its answer, uncorrected (microseconds). */
  readonly rawUs: { n: number; p50: number; p90: number; p99: number; max: number } | null;
  /** How often the request list was replayed from the start. */
  readonly wraps: number;
}

export function wrkVersion(): string | undefined {
  try {
    // `wrk --version` prints its banner and exits 1.
    execFileSync('wrk', ['--version'], { encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    const out = String((err as { stdout?: string }).stdout ?? '');
    const m = /^wrk (\S+)/m.exec(out);
    if (m) return m[1];
    if ((err as { code?: string }).code === 'ENOENT') return undefined;
  }
  return 'unknown';
}

export interface WrkRun {
  readonly url: string;
  readonly requestsFile: string;
  readonly connections: number;
  readonly seconds: number;
  /** Pause in ms before each request on a connection (fixed-rate runs). */
  readonly delayMs?: number;
  /** Time each request on a monotonic clock (one connection only: rawUs). */
  readonly raw?: boolean;
}

export async function wrk(run: WrkRun): Promise<WrkResult> {
  const args = ['-t1', `-c${run.connections}`, `-d${run.seconds}s`, '--timeout', '5s', '-s', SCRIPT, run.url, '--', run.requestsFile];
  const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BENCH_DELAY_MS: String(run.delayMs ?? 0), BENCH_RAW: run.raw && run.connections === 1 ? '1' : '0', BENCH_RUN: (Math.random() * 36 ** 4 | 0).toString(36).padStart(4, '0') } });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (code !== 0 || !line) throw new Error(`wrk ${args.join(' ')} failed (exit ${code}):\n${out}`);
  return JSON.parse(line.slice('BENCH_JSON '.length)) as WrkResult;
}
