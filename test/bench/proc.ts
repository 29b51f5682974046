// Child processes of the benchmark and what the kernel says about them: CPU time from
// /proc/<pid>/stat (utime + stime, in clock ticks) and memory from /proc/<pid>/status
// (VmRSS now, VmHWM the peak resident set since start).

import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, openSync } from 'node:fs';

const TICKS = (() => {
  try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100; } catch { return 100; }
})();

/** CPU seconds (user + system) the process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // fields 14 and 15 of stat(5)
}

export interface Memory {
  /** Resident set now, MiB. */
  readonly rssMiB: number;
  /** Peak resident set since start (VmHWM), MiB. */
  readonly peakRssMiB: number;
  /** Anonymous resident memory now (heap, stacks, malloc): what a cgroup cannot reclaim. */
  readonly anonMiB: number;
  /** File-backed resident pages now (mostly the node binary's text): reclaimable. */
  readonly fileMiB: number;
}

export function memory(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, peakRssMiB: kb('VmHWM') / 1024, anonMiB: kb('RssAnon') / 1024, fileMiB: kb('RssFile') / 1024 };
}

/** Samples memory every `ms` and keeps each process's highest anonymous resident set. */
export function peakSampler(pids: Record<string, number>, ms = 200): { peaks(): Record<string, { anonMiB: number; fileMiB: number }>; stop(): void } {
  const peaks: Record<string, { anonMiB: number; fileMiB: number }> = {};
  const tick = () => {
    for (const [name, pid] of Object.entries(pids)) {
      try {
        const m = memory(pid);
        const p = (peaks[name] ??= { anonMiB: 0, fileMiB: 0 });
        if (m.anonMiB > p.anonMiB) p.anonMiB = m.anonMiB;
        if (m.fileMiB > p.fileMiB) p.fileMiB = m.fileMiB;
      } catch { /* exited */ }
    }
  };
  const timer = setInterval(tick, ms);
  tick();
  return { peaks: () => peaks, stop: () => clearInterval(timer) };
}

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number;
  /** The port the child printed as `READY <port>`, if it prints one. */
  readonly port?: number;
  stop(): Promise<void>;
}

export interface SpawnOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** File that receives stdout and stderr (driftguard's logs); default: discarded. */
  readonly logFile?: string;
  /** Wait for a `READY <port>` line on stdout (our own helpers print one). */
  readonly printsPort?: boolean;
}

/** Start `node <args>` with the harness's own Node (the project's Node 24). */
export async function spawnNode(name: string, args: string[], options: SpawnOptions = {}): Promise<Child> {
  const log = options.logFile ? openSync(options.logFile, 'a') : 'ignore';
  const child = spawn(process.execPath, args, {
    env: options.env ?? process.env,
    stdio: ['ignore', options.printsPort ? 'pipe' : log, log],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let port: number | undefined;
  if (options.printsPort) {
    port = await new Promise<number>((resolve, reject) => {
      let seen = '';
      child.stdout!.on('data', (c: Buffer) => {
        seen += c.toString();
        const m = /READY (\d+)/.exec(seen);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready`)));
    });
  }
  return {
    name, process: child, pid: child.pid!, ...(port !== undefined ? { port } : {}),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Run a node script to completion and return the JSON it printed after BENCH_JSON. */
export async function runNodeJson<T>(args: string[]): Promise<T> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  if (code !== 0 || !line) throw new Error(`node ${args.join(' ')} failed (exit ${code}): ${out.slice(-500)}`);
  return JSON.parse(line.slice('BENCH_JSON '.length)) as T;
}
