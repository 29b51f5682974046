// The journal that keeps admin API revocations across restarts: one JSON line per change,
// appended and fsync'd before the API answers, replayed at start. A crash can tear only the
// last line (the one being appended): it is skipped, reported and cut off, so that the next
// append starts on a clean line; an append that fails while the process runs (a full disk)
// is cut back at once, for the same reason. Any other unreadable line is skipped and reported
// too; nothing in the journal can stop start-up. At start, and while running once the records
// that no longer count outnumber those in force, the journal is compacted to the revocations
// still in force, so it does not grow without bound.

import { closeSync, constants, existsSync, fstatSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync, ftruncateSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { isRevocationKind, type Revocation } from './revocations.ts';
import { readRegularFile } from '../lib/files.ts';
import { holdsToken, redactText } from '../lib/redact.ts';

export type JournalRecord =
  | { readonly op: 'add'; readonly revocation: Revocation }
  | { readonly op: 'delete'; readonly id: string; readonly by: string; readonly at: number };

export interface Replayed {
  /** Admin revocations in force after replaying every record. */
  readonly revocations: Revocation[];
  /** Lines that could not be read: 1-based line number and why. */
  readonly skipped: { readonly line: number; readonly problem: string }[];
}

/** Read the journal at `file` (missing: empty); cut a torn last line off the file. */
export function replay(file: string, now: number): Replayed {
  const read = readJournal(file);
  if (read.torn > 0) {
    const fd = openSync(file, 'r+');
    try { ftruncateSync(fd, read.whole); fsyncSync(fd); } finally { closeSync(fd); }
  }
  return { revocations: read.live.filter((r) => r.endMs > now), skipped: read.skipped };
}

/**
 * Read the journal at `file` without changing it: its live revocations, the lines skipped (a
 * torn last line among them), and where its whole lines end. Throws for a file that is no
 * journal. `driftguard check` reads it so, as start-up (replay) does.
 */
export function readJournal(file: string): { live: Revocation[]; skipped: { line: number; problem: string }[]; whole: number; torn: number } {
  const skipped: { line: number; problem: string }[] = [];
  const live = new Map<string, Revocation>();
  if (!existsSync(file)) return { live: [], skipped, whole: 0, torn: 0 };
  const bytes = readRegularFile(file);
  const lastNewline = bytes.lastIndexOf(0x0a);
  const complete = bytes.subarray(0, lastNewline + 1).toString('utf8');
  const lines = complete.split('\n');
  lines.pop(); // the empty string after the last newline
  let records = 0;
  /** Lines of zero bytes only: a crash tore an append, as it may tear the last line. */
  let zeroed = 0;
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    if (ZEROS.test(line)) { zeroed++; skipped.push({ line: i + 1, problem: `zero bytes (${line.length}), as a crash leaves an append it tore` }); return; }
    const record = parseRecord(line);
    if (typeof record === 'string') { skipped.push({ line: i + 1, problem: record }); return; }
    records++;
    // An older version journaled a token pasted as the value (the admin API refuses it now): it
    // matched nothing (a jti is the claim, not the token), and replayed it would be listed by
    // GET /revocations and written back by the compaction. Dropped, never quoted.
    if (record.op === 'add' && holdsToken(record.revocation.value)) {
      skipped.push({ line: i + 1, problem: `revocation ${record.revocation.id}'s value holds a whole token (journaled by an older version; it matched no request): dropped. Revoke what the token names instead (its jti, sub or kid)` });
      return;
    }
    if (record.op === 'add') live.set(record.revocation.id, record.revocation);
    else live.delete(record.id);
  });
  const torn = bytes.length - lastNewline - 1;
  const tail = bytes.subarray(lastNewline + 1);
  // Text of which no line is a record is some other file (named by mistake): replaying would
  // cut its last line and compacting rewrite it empty. Refused, and left as it is. Not a
  // journal compacted empty (start leaves it so when nothing is revoked) whose first append a
  // crash tore: its only text is the start of a record, or zero bytes (a file grown before
  // its data reached the disk).
  if (records === 0 && (skipped.length > zeroed || torn > 0 && !startsRecord(tail) && !ZEROS.test(tail.toString('latin1')))) {
    throw new Error(`${file} is not a revocation journal (no line of it is a journal record); it is left as it is`);
  }
  if (torn > 0) skipped.push({ line: lines.length + 1, problem: `torn last line (${torn} bytes without a newline), cut off` });
  return { live: [...live.values()], skipped, whole: lastNewline + 1, torn };
}

const ZEROS = /^\0+$/;

/** How every record's line starts (JSON.stringify of a JournalRecord). */
const RECORD_START = Buffer.from('{"op":');

/** Whether `tail`, a line without its newline, is a record cut short: the start of one, however little of it. */
function startsRecord(tail: Buffer): boolean {
  const n = Math.min(tail.length, RECORD_START.length);
  return tail.subarray(0, n).equals(RECORD_START.subarray(0, n));
}

function parseRecord(line: string): JournalRecord | string {
  let value: unknown;
  try { value = JSON.parse(line); } catch { return 'not JSON'; }
  const v = value as Record<string, unknown>;
  if (v?.op === 'delete' && typeof v.id === 'string') return { op: 'delete', id: v.id, by: String(v.by ?? ''), at: Number(v.at ?? 0) };
  const r = v?.revocation as Record<string, unknown> | undefined;
  if (v?.op === 'add' && r && typeof r.id === 'string' && isRevocationKind(r.kind) && typeof r.value === 'string' && typeof r.reason === 'string'
      && typeof r.endMs === 'number' && typeof r.createdMs === 'number') {
    // A token an older version journaled in the reason (pasted as the evidence) is replaced:
    // the revocation itself stands.
    return { op: 'add', revocation: { id: r.id, kind: r.kind, value: r.value, reason: redactText(r.reason), endMs: r.endMs, createdMs: r.createdMs, source: 'admin', ...(typeof r.by === 'string' ? { by: redactText(r.by) } : {}) } };
  }
  return 'not a journal record';
}

export class Journal {
  readonly file: string;
  #fd: number;
  /** Bytes of whole records in the file: where a failed append is cut back to. */
  #size: number;
  /** A failed append could not be cut back: the next record starts on a line of its own. */
  #torn = false;

  /** Records in the file: the live ones it was last compacted to, and every append since. */
  #records: number;

  /** `<file>.lock`, ours while this journal is open. */
  readonly #lock: string;

  /** Open `file` for appending, after rewriting it with exactly `live` (compaction). */
  constructor(file: string, live: readonly Revocation[]) {
    this.file = file;
    this.#lock = lock(file);
    try {
      const { fd, size } = rewrite(file, live);
      this.#fd = fd;
      this.#size = size;
    } catch (err) {
      unlock(this.#lock);
      throw err;
    }
    this.#records = live.length;
  }

  get records(): number { return this.#records; }

  /**
   * Compact while running, not only at start: when the records that no longer count (lifted,
   * ended) outnumber those in force, the file is rewritten with exactly `live()`. Without it
   * the file grew with every write for as long as the process ran, and the next start read it
   * whole. Throws when the rewrite fails; the file and the appends then go on as before.
   */
  compactIfSparse(live: () => readonly Revocation[]): boolean {
    if (this.#records < COMPACT_AFTER) return false;
    const kept = live();
    if (this.#records <= 2 * kept.length) return false;
    const { fd, size } = rewrite(this.file, kept);
    closeSync(this.#fd);
    this.#fd = fd;
    this.#size = size;
    this.#records = kept.length;
    this.#torn = false;
    return true;
  }

  /**
   * Append one record and fsync: when this returns, the change survives a crash. When it
   * throws (a full disk: part of the line may be written), the file is cut back to its last
   * whole record, so that the next record, which the API will acknowledge, does not land on
   * the end of a fragment and become unreadable at the next start.
   */
  append(record: JournalRecord): void {
    // Written to a file nobody will read again (another process put its own in its place):
    // refused rather than acknowledged, since it would not survive a restart.
    const at = statSync(this.file, { throwIfNoEntry: false });
    if (!at || at.ino !== fstatSync(this.#fd).ino || at.dev !== fstatSync(this.#fd).dev) {
      throw Object.assign(new Error(`${this.file} is no longer the file this process writes (replaced or removed)`), { code: 'EJOURNALREPLACED' });
    }
    const line = Buffer.from((this.#torn ? '\n' : '') + JSON.stringify(record) + '\n');
    let written = 0;
    try {
      while (written < line.length) written += writeSync(this.#fd, line, written);
      fsyncSync(this.#fd);
    } catch (err) {
      try {
        ftruncateSync(this.#fd, this.#size);
        this.#torn = false;
      } catch { this.#torn = true; }
      throw err;
    }
    this.#size += line.length;
    this.#records++;
    this.#torn = false;
  }

  close(): void {
    if (this.#fd >= 0) { closeSync(this.#fd); this.#fd = -1; unlock(this.#lock); }
  }
}

/** The journal locks this process holds: a second journal on one file in one process is refused too. */
const held = new Set<string>();

/**
 * Take `<file>.lock` for this process: a second driftguard on the same journal (`run` tried in
 * an exec'd shell, a supervisor starting the next process before the last has exited) would
 * put its compacted copy in place of the running one's, whose later revocations would then be
 * acknowledged into a file nobody reads. The lock names its holder by pid and start time, so
 * that a lock whose process is gone (a crash, a restart that gave its pid to another process,
 * this one included) is taken over.
 */
function lock(file: string): string {
  const path = `${file}.lock`;
  if (held.has(path)) throw new Error(`in use by this process (${path}): two driftguards on one journal lose each other's revocations`);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try { writeSync(fd, `${process.pid} ${startOf(process.pid) ?? '-'}\n`); } finally { closeSync(fd); }
      held.add(path);
      return path;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      let holder = '';
      try { holder = readFileSync(path, 'utf8').trim(); } catch { /* gone meanwhile: try again */ }
      const [pid, start] = holder.split(' ');
      if (pid !== undefined && running(Number(pid), start)) {
        throw new Error(`in use by process ${pid} (${path}): two driftguards on one journal lose each other's revocations`);
      }
      try { unlinkSync(path); } catch { /* taken over by another meanwhile: the next open says */ }
    }
  }
}

function unlock(path: string): void {
  if (!held.delete(path)) return;
  try { if (readFileSync(path, 'utf8').startsWith(`${process.pid} `)) unlinkSync(path); } catch { /* gone already */ }
}

/** The start time of process `pid` (in clock ticks since boot, /proc/<pid>/stat), where Linux says. */
function startOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch { return undefined; }
}

/** Whether the process that wrote a lock (its pid and start time) still runs: not this one, which holds none it has not taken. */
function running(pid: number, start: string | undefined): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try { process.kill(pid, 0); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; }
  const now = startOf(pid);
  // Where /proc cannot say, a live process of that pid counts as the writer.
  return now === undefined || start === undefined || start === '-' || now === start;
}

/**
 * Throws as a start would when `dir` does not take new files (a read-only mount, /proc): a
 * file is made there and removed. Not access(2): it says yes to root on a read-only directory
 * mode, and to anyone on a filesystem that makes no files (procfs). A new file only (O_EXCL),
 * at a name nobody can guess: at a known name, a symlink planted there by whoever else writes
 * the directory made the probe truncate the file it named (the running journal).
 */
export function probeDirectory(dir: string): void {
  const probe = join(dir, `.driftguard-probe-${process.pid}-${randomUUID()}`);
  closeSync(openSync(probe, 'wx', 0o600));
  try { unlinkSync(probe); } catch { /* made and gone: writable all the same */ }
}

/** Records below which a journal is not compacted while running: a rewrite costs more than they do. */
const COMPACT_AFTER = 1_000;

/**
 * Write exactly `live` to a new file and put it in place of `file`; the returned descriptor
 * stays open on it, positioned at its end, for the appends that follow. Until the rename the
 * old file is untouched.
 */
function rewrite(file: string, live: readonly Revocation[]): { fd: number; size: number } {
  const tmp = `${file}.tmp-${process.pid}`;
  // O_APPEND: a failed append is cut back with ftruncate, and the next one must land at the
  // new end, not where the cut-off fragment had left the file position.
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_APPEND, 0o600);
  let size = 0;
  try {
    for (const r of live) size += writeSync(fd, JSON.stringify({ op: 'add', revocation: r }) + '\n');
    fsyncSync(fd);
    renameSync(tmp, file);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  syncDirectory(dirname(file));
  return { fd, size };
}

function syncDirectory(dir: string): void {
  // The rename is durable only once the directory entry is; some filesystems refuse, which is fine.
  try { const fd = openSync(dir, 'r'); try { fsyncSync(fd); } finally { closeSync(fd); } } catch { /* best effort */ }
}
