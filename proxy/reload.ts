// Rules hot reload. Kubernetes updates a ConfigMap mounted as a directory by writing a new
// timestamped directory and swapping the `..data` symlink, so the file's own inode never
// changes: we watch the directory, debounce, and compare the file's hash. SIGHUP and
// POST /reload trigger the same path. A reload is validated whole before the swap; an
// invalid file keeps the last good rules and is reported, never half-applied.

import { realpathSync, watch, statSync, type FSWatcher } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, basename, resolve } from 'node:path';
import { firstProblems, formatProblem, loadRules, problemInFile, RulesError, type Overrides } from './rules/load.ts';
import { ShuttingDown, type Driftguard } from './server.ts';
import type { Rules } from './rules/types.ts';
import { readRegularFile } from './lib/files.ts';

/**
 * What a reload compares: the rules file's hash, the overridden proxy settings, and the keys
 * of every JWKS file the rules name, as the loader read them (a key rotated in a mounted
 * Secret is a change too).
 */
function fingerprint(rules: Rules): string {
  const h = createHash('sha256').update(rules.hash).update(JSON.stringify(rules.proxy));
  for (const i of rules.identity.issuers) if (i.jwks.kind === 'file') h.update(JSON.stringify(i.jwks.keys));
  return h.digest('hex');
}

/**
 * What the reloader has done, shown in /readyz's body. One object, updated in place, so that
 * telemetry can read it at collection time: `succeeded` and `failed` only ever grow (counters);
 * `lastError` is set while the file on disk is not the rules in force because it was rejected.
 */
export interface ReloadStatus {
  /** Reloads that swapped new rules in. */
  succeeded: number;
  /** Reloads rejected (the last good rules stayed in force). */
  failed: number;
  /** Outcome of the last reload that found a change or an error. */
  lastResult?: 'succeeded' | 'failed';
  lastError?: string;
  lastErrorAt?: string;
  lastReloadAt?: string;
  /**
   * How a change to the file is noticed: `events` from the file system, or `polling` (read
   * every POLL_MS) where the directory cannot be watched (inotify instances used up on the
   * node, a file system without events).
   */
  watching: 'events' | 'polling';
}

export interface Reloader {
  readonly status: ReloadStatus;
  /** Reload now; resolves to what happened. */
  reload(trigger: string): Promise<{ changed: boolean; error?: string; hash: string }>;
  close(): void;
}

/** How long the rules file must read the same before a change the watcher saw is applied. */
export const SETTLE_MS = 1_000;
/** How soon a reload rejected for a key set that could not be fetched is tried again. */
export const RETRY_MS = 30_000;
/** How often the files are read for a change when their directory cannot be watched. */
export const POLL_MS = 2_000;
/** How often a watched rules directory that was replaced is looked for while its path names nothing. */
const REWATCH_MS = 500;

export function reloader(file: string, overrides: Overrides, dg: Driftguard, log: (line: Record<string, unknown>) => void, retryMs = RETRY_MS, watchDir: typeof watch = watch): Reloader {
  const status: ReloadStatus = { succeeded: 0, failed: 0, watching: 'events' };
  let running: Promise<{ changed: boolean; error?: string; hash: string }> = Promise.resolve({ changed: false, hash: dg.generation.rules.hash });
  let inForce = fingerprint(dg.generation.rules);

  let retry: NodeJS.Timeout | undefined;
  /** The files beside the rules that the last refused rules named (RulesError.files); none once rules load. */
  let awaited: readonly string[] = [];
  async function once(trigger: string) {
    // Queued behind a reload that was running when the drain began.
    if (closed) return shuttingDown();
    // Any reload reads the file anew: a retry waiting is this one.
    clearTimeout(retry);
    try {
      const next = loadRules(file, overrides);
      awaited = [];
      const print = fingerprint(next);
      if (print === inForce) {
        // The file is valid and already in force (e.g. a rejected edit was rolled back).
        if (status.lastError !== undefined) { delete status.lastError; status.lastResult = 'succeeded'; }
        log({ level: 'info', msg: 'rules unchanged', trigger, rules: next.hash });
        return { changed: false, hash: next.hash };
      }
      for (const field of ['listen', 'admin', 'probes'] as const) {
        if (next.proxy[field] !== dg.generation.rules.proxy[field]) {
          throw new RulesError([problemInFile(next.source, ['proxy', field], `cannot change without a restart (in force: ${dg.generation.rules.proxy[field]}, file: ${next.proxy[field]})`)]);
        }
      }
      const from = dg.generation.rules.hash;
      await dg.swap(next);
      inForce = print;
      status.succeeded++;
      status.lastResult = 'succeeded';
      status.lastReloadAt = new Date().toISOString();
      delete status.lastError;
      // The same rules hash: what changed is a JWKS file the rules name (the fingerprint reads them).
      log({ level: 'info', msg: 'rules reloaded', trigger, from, to: next.hash, ...(from === next.hash ? { changed: 'a JWKS file' } : {}) });
      return { changed: true, hash: next.hash };
    } catch (err) {
      // The drain began while it ran: not a problem of the file, and nothing is in force anew.
      if (err instanceof ShuttingDown) return shuttingDown();
      status.failed++;
      status.lastResult = 'failed';
      awaited = err instanceof RulesError ? err.files : [];
      status.lastError = err instanceof RulesError ? firstProblems(err.problems).map(formatProblem).join('\n') : `${file}: ${(err as Error).message}`;
      status.lastErrorAt = new Date().toISOString();
      log({ level: 'error', msg: 'rules reload rejected; the last good rules stay in force', trigger, rules: dg.generation.rules.hash, error: status.lastError, ...(err instanceof RulesError && err.transient ? { retryInSeconds: retryMs / 1000 } : {}) });
      // A new issuer's key set was down at that moment: a ConfigMap change reaches every pod at
      // once, and a pod that gave up would serve the old rules until the next change, unlike
      // the rest of its fleet. The same file is tried again until it loads or changes.
      if (err instanceof RulesError && err.transient && !closed) {
        clearTimeout(retry);
        retry = setTimeout(() => { void reload('retry'); }, retryMs).unref();
      }
      return { changed: false, error: status.lastError, hash: dg.generation.rules.hash };
    }
  }

  // One reload at a time: a burst of events ends with the file's final state. Asked for while
  // one runs, a reload waits its turn; asked for while one already waits, it is that one (it
  // reads the file when its turn comes, so it sees the latest change too): a burst of SIGHUPs
  // behind a slow key fetch queues one reload, not one per signal.
  let waiting: Promise<{ changed: boolean; error?: string; hash: string }> | undefined;
  const reload = (trigger: string) => {
    if (waiting) return waiting;
    const start = () => { waiting = undefined; return once(trigger); };
    // once() answers every failure itself; should it ever reject, the next reload still runs.
    const next = running.then(start, start);
    waiting = running = next;
    return next;
  };

  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  // Closed (driftguard is draining): a reload would build a generation (a pool, key sets)
  // that nothing ever closes. SIGHUP and POST /reload then change nothing.
  let closed = false;
  // A file written in place, in several writes, can be valid YAML halfway (the sections before
  // `revocation:`, say) and would put rules in force that lack what follows. So a change seen
  // by the watcher is applied only once the file has read the same for SETTLE_MS, and any
  // event meanwhile starts the wait again. (SIGHUP and POST /reload apply at once: an operator
  // asked.) Writers should still replace the file whole: a temp file and a rename, as
  // Kubernetes does with a ConfigMap.
  const contents = (f: string): string => { try { return readRegularFile(f).toString('latin1'); } catch (err) { return `unreadable: ${(err as NodeJS.ErrnoException).code}`; } };
  function settle(): void {
    const before = contents(file);
    timer = setTimeout(() => { if (contents(file) === before) void reload('file change'); else settle(); }, SETTLE_MS);
  }
  // Only events for the rules file, the ConfigMap's `..data` symlink, or a JWKS file next to
  // the rules count: a decision log or anything else written into the same directory must
  // not reload (each reload parses and validates the whole file).
  // Absolute, as the loader makes a JWKS file's path: `--config rules.yaml` names a relative one.
  const dir = resolve(dirname(file));
  // And those the last refused rules named (RulesError.files): written after the rules (a key
  // set copied in second), one lets the refused rules load, and nothing else would reload them.
  const besideRules = () => [
    ...dg.generation.rules.identity.issuers.flatMap((i) => ('file' in i.jwks && dirname(i.jwks.file) === dir ? [i.jwks.file] : [])),
    ...awaited.filter((f) => dirname(f) === dir),
  ];
  // The rules file may be a link to a file beside it (`rules.yaml -> rules-v2.yaml`, a deploy
  // tool's layout): an edit of that file is named by its own name. Looked up at each event, as
  // the link may have moved.
  const target = (): string | undefined => { try { const real = realpathSync(file); return dirname(real) === realpathSync(dir) ? basename(real) : undefined; } catch { return undefined; } };
  const interesting = (name: string) => name === basename(file) || name === '..data' || besideRules().some((f) => basename(f) === name) || name === target();
  const changed = () => { clearTimeout(timer); timer = setTimeout(settle, 150); };
  // Without events, a change was never applied and nothing said so: the files are read every
  // POLL_MS instead, and /readyz shows `watching: polling`.
  let polling: NodeJS.Timeout | undefined;
  const poll = (err: unknown) => {
    watcher?.close();
    watcher = undefined;
    if (polling !== undefined || closed) return;
    status.watching = 'polling';
    log({ level: 'warn', msg: `the rules directory cannot be watched; its files are read every ${POLL_MS / 1000}s for changes instead`, dir, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
    const snapshot = () => [file, ...besideRules()].map((f) => contents(f)).join('\0');
    let last = snapshot();
    polling = setInterval(() => { const now = snapshot(); if (now !== last) { last = now; changed(); } }, POLL_MS).unref();
  };
  // A watch follows the directory it was set on, not the path: once that directory is replaced
  // (a release symlink switched and the old release deleted; a deploy tool's `rm -r` and
  // `mkdir`) it tells nothing more, and no error says so. Each event looks whether the path
  // still names the directory watched; when not, the path is watched again (once it exists)
  // and read, since what changed there was not seen.
  let watched: string | undefined;
  let rewatch: NodeJS.Timeout | undefined;
  const directory = (): string | undefined => { try { const s = statSync(dir); return `${s.dev}:${s.ino}`; } catch { return undefined; } };
  const watchRules = (again: boolean): void => {
    watcher?.close();
    watcher = undefined;
    if (closed || polling !== undefined) return;
    watched = directory();
    if (watched === undefined) {
      if (!again) { poll(Object.assign(new Error('no such directory'), { code: 'ENOENT' })); return; }
      // Gone for now (between a deploy tool's `rm -r` and `mkdir`): looked for again.
      rewatch = setTimeout(() => watchRules(true), REWATCH_MS).unref();
      return;
    }
    try {
      watcher = watchDir(dir, { persistent: false }, (_event, name) => {
        // Its own name: the directory watched was removed or moved (a new one at the path may
        // have its inode number: a freed one is soon reused).
        if (String(name) === basename(dir) || directory() !== watched) { watchRules(true); changed(); return; }
        if (name !== null && !interesting(String(name))) return;
        changed();
      });
      // The watch broke: read instead (SIGHUP and /reload work either way).
      watcher.on('error', poll);
    } catch (err) { poll(err); return; }
    if (again) changed();
  };
  watchRules(false);

  const shuttingDown = () => ({ changed: false, error: 'driftguard is shutting down', hash: dg.generation.rules.hash });
  return {
    status,
    reload: (trigger) => (closed ? Promise.resolve(shuttingDown()) : reload(trigger)),
    close() { closed = true; clearTimeout(timer); clearTimeout(retry); clearTimeout(rewatch); clearInterval(polling); watcher?.close(); },
  };
}
