// Rules hot reload. Kubernetes updates a ConfigMap mounted as a directory by writing a new
// timestamped directory and swapping the `..data` symlink, so the file's own inode never
// changes: we watch the directory, debounce, and compare the file's hash. SIGHUP and
// POST /reload trigger the same path. A reload is validated whole before the swap; an
// invalid file keeps the last good rules and is reported, never half-applied.

import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { loadRules, RulesError, type Overrides } from './rules/load.ts';
import type { Driftguard } from './server.ts';

export interface ReloadStatus {
  succeeded: number;
  failed: number;
  lastError?: string;
  lastErrorAt?: string;
  lastReloadAt?: string;
}

export interface Reloader {
  readonly status: ReloadStatus;
  /** Reload now; resolves to what happened. */
  reload(trigger: string): Promise<{ changed: boolean; error?: string; hash: string }>;
  close(): void;
}

export function reloader(file: string, overrides: Overrides, dg: Driftguard, log: (line: Record<string, unknown>) => void): Reloader {
  const status: ReloadStatus = { succeeded: 0, failed: 0 };
  let running: Promise<{ changed: boolean; error?: string; hash: string }> = Promise.resolve({ changed: false, hash: dg.generation.rules.hash });

  async function once(trigger: string) {
    try {
      const next = loadRules(file, overrides);
      if (next.hash === dg.generation.rules.hash && JSON.stringify(next.proxy) === JSON.stringify(dg.generation.rules.proxy)) {
        return { changed: false, hash: next.hash };
      }
      if (next.proxy.listen !== dg.generation.rules.proxy.listen || next.proxy.admin !== dg.generation.rules.proxy.admin) {
        throw new Error('proxy.listen and proxy.admin cannot change without a restart');
      }
      const from = dg.generation.rules.hash;
      await dg.swap(next);
      status.succeeded++;
      status.lastReloadAt = new Date().toISOString();
      delete status.lastError;
      log({ level: 'info', msg: 'rules reloaded', trigger, from, to: next.hash });
      return { changed: true, hash: next.hash };
    } catch (err) {
      status.failed++;
      status.lastError = err instanceof RulesError ? err.message : `${file}: ${(err as Error).message}`;
      status.lastErrorAt = new Date().toISOString();
      log({ level: 'error', msg: 'rules reload rejected; the last good rules stay in force', trigger, rules: dg.generation.rules.hash, error: status.lastError });
      return { changed: false, error: status.lastError, hash: dg.generation.rules.hash };
    }
  }

  // One reload at a time, in order: a burst of events ends with the file's final state.
  const reload = (trigger: string) => (running = running.then(() => once(trigger)));

  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(file), { persistent: false }, () => {
      clearTimeout(timer);
      timer = setTimeout(() => { void reload('file change'); }, 150);
    });
    watcher.on('error', () => { /* the directory went away; SIGHUP and /reload still work */ });
  } catch { /* no watch support: SIGHUP and /reload still work */ }

  return {
    status, reload,
    close() { clearTimeout(timer); watcher?.close(); },
  };
}
