// The decision log: one JSON line per decision, collected in memory and written in batches
// (every 100 ms, or sooner once 64 KiB are waiting), so a request never waits on a write.
// When the output cannot keep up, at most maxBufferBytes wait; further lines are dropped and
// counted rather than growing memory without bound or slowing requests.

import { closeSync, constants, createWriteStream, fstatSync, openSync, readSync, statSync, type Stats, type WriteStream } from 'node:fs';
import type { LogOutput } from './config.ts';
import { heldBytes, type TableFill } from '../lib/heap.ts';

const FLUSH_MS = 100;
const FLUSH_BYTES = 64 * 1024;

/** How often the path of a file output is looked at for a rotated-in file, at most. */
const ROTATION_CHECK_MS = 1_000;
/** How often a file output that failed (a full disk) is opened again. */
export const REOPEN_MS = 5_000;
/** The error a file output's path reports when something else than a file is put there. */
const NOT_A_FILE = 'not a regular file (a named pipe or socket)';

export interface DecisionLogOptions {
  /** Told once when the output fails, with the error's code, and once a write succeeds again (a file output, opened again). */
  readonly report?: (failed: boolean, error?: string) => void;
  readonly reopenMs?: number;
}

export class DecisionLog {
  #out?: NodeJS.WritableStream;
  readonly #maxBytes: number;
  /** The file stream it opened itself, ended at close (stdout and stderr are left open). */
  #file?: WriteStream;
  readonly #path?: string;
  readonly #report?: DecisionLogOptions['report'];
  readonly #reopenMs: number;
  #reopen?: NodeJS.Timeout;
  #closed = false;
  #pending: string[] = [];
  /** A line taken from #pending is being written alone (#probe). */
  #probing = false;
  #bytes = 0;
  #timer?: NodeJS.Timeout;
  /** The output refused more (back-pressure): wait for 'drain' before the next write. */
  #blocked = false;
  /**
   * stdout or stderr failed (a reader gone): nothing is written from then on. A file output
   * that fails (a full disk) is blocked instead, until it is opened again (every REOPEN_MS).
   */
  #failed = false;
  /** The failure was reported, and no write has succeeded since. */
  #reported = false;
  /** The file open now, as it was when opened: a file at the path that is not it was rotated in. */
  #opened?: Stats;
  #checkedAt = 0;
  /** The file opened again ends in part of a line: the next batch starts with a newline. */
  #resumed = false;
  /** Lines the output took (counted when their batch's write completed). */
  lines = 0;
  /** Lines refused (the buffer was full, or the output had failed) or lost with a failed write. */
  dropped = 0;

  constructor(output: LogOutput, maxBufferBytes: number, options: DecisionLogOptions = {}) {
    this.#maxBytes = maxBufferBytes;
    this.#report = options.report;
    this.#reopenMs = options.reopenMs ?? REOPEN_MS;
    if (output.kind === 'file') {
      this.#path = output.file;
      // Open now so that a bad path stops start-up with its name, not the first request.
      this.#open(openSync(output.file, 'a', 0o640));
    } else {
      this.#out = output.kind === 'stdout' ? process.stdout : output.kind === 'stderr' ? process.stderr : undefined;
      // A reader that goes away (a log shipper restarting, `| head`) makes the pipe fail with
      // EPIPE as an 'error' event: unheard, it ended the process. Lines are dropped from then on.
      this.#out?.on('error', (err) => this.#fail(err));
    }
  }

  #open(fd: number): void {
    const stream = createWriteStream('', { fd });
    // A failing disk must not crash the proxy: lines are dropped, and counted.
    stream.on('error', (err) => { if (this.#file === stream) this.#fail(err); });
    this.#out = this.#file = stream;
    try { this.#opened = fstatSync(fd); } catch { this.#opened = undefined; }
    this.#checkedAt = performance.now();
  }

  /**
   * Open the file at its path again, in place of the one open now; the error when it cannot be.
   * What is at the path now is looked at first, as start-up does: opening a named pipe put
   * there waits for a reader, and that wait (a synchronous open) stopped the whole sidecar.
   */
  #reopenFile(finish: (old: WriteStream) => void): NodeJS.ErrnoException | undefined {
    let fd: number;
    try {
      const at = statSync(this.#path!, { throwIfNoEntry: false });
      if (at && !at.isFile() && !at.isCharacterDevice()) return Object.assign(new Error(`${this.#path} is not a regular file`), { code: NOT_A_FILE });
      // Never waiting, even for a pipe put there between the look and the open: ENXIO instead
      // (O_NONBLOCK changes nothing for a file).
      fd = openSync(this.#path!, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK, 0o640);
    } catch (err) { return err as NodeJS.ErrnoException; }
    const old = this.#file!;
    this.#open(fd);
    finish(old);
    this.#resumed = endsMidLine(this.#path!);
    return undefined;
  }

  /**
   * The file at the path is no longer the one open (logrotate renamed it, or it was deleted):
   * open the path again, so lines go to the new file, not on into the rotated one or into a
   * deleted file that holds its disk space unseen. What was written before stays where it went.
   * Looked at no more than once a second, before a batch is written.
   */
  #followRotation(): void {
    const now = performance.now();
    if (now - this.#checkedAt < ROTATION_CHECK_MS || !this.#opened) return;
    this.#checkedAt = now;
    let at: Stats | undefined;
    try { at = statSync(this.#path!, { throwIfNoEntry: false }); } catch { return; }
    if (at && at.ino === this.#opened.ino && at.dev === this.#opened.dev) return;
    // The old stream finishes what it was given, into the rotated file, then closes.
    const failed = this.#reopenFile((old) => { old.end(); });
    // Not to be opened again (its folder gone or read-only, a pipe in its place): lines written
    // on into the deleted or rotated file were counted as written, and nobody was told. The
    // file output fails instead: said once, lines wait, it is opened again every REOPEN_MS.
    if (failed) this.#fail(failed);
  }

  get enabled(): boolean { return this.#out !== undefined; }

  #fail(err: unknown): void {
    if (this.#failed || this.#blocked && this.#reopen) return;
    // Once, until a write succeeds again: the audit trail stops, and an operator must hear of
    // it, not find a flat counter; a disk still full at each reopen is not a line every 5 s.
    if (!this.#reported) { this.#reported = true; this.#report?.(true, (err as NodeJS.ErrnoException | undefined)?.code ?? 'UNKNOWN'); }
    if (this.#path !== undefined && !this.#closed) {
      // A file: lines wait for it to be opened again (as they wait for a slow one, within
      // maxBufferBytes); the ones in the failed write are lost.
      this.#blocked = true;
      this.#retry();
      return;
    }
    this.#failed = this.#blocked = true;
    this.dropped += this.#pending.length;
    this.#pending = [];
    this.#bytes = 0;
  }

  /**
   * Open the file again (its path: a rotated or remounted file is the new one), and write what
   * waits to it: space freed on a full disk, the decision log resumes without a restart. A
   * line a failed write cut is left cut; the next batch starts on a line of its own.
   */
  #retry(): void {
    this.#reopen = setTimeout(() => {
      this.#reopen = undefined;
      if (this.#closed) return;
      // The failed stream has nothing left worth writing.
      if (this.#reopenFile((old) => { old.destroy(); })) { this.#retry(); return; }
      this.#probe();
    }, this.#reopenMs);
    this.#reopen.unref();
  }

  /**
   * After the file was opened again, the waiting lines one write each, until none waits; then
   * batches again. The disk may still be (all but) full: handed every waiting line in one write,
   * a failed write lost them all at every reopen, so that lines waited through a full disk of 5 s
   * at most; and a probe of one line that fitted in a page just freed let the rest go in one
   * write that failed part-way, the lines it did write counted as dropped. A line that fails
   * here waits again, at the head (part of it may have reached the file: the next write starts
   * a line of its own).
   */
  #probe(): void {
    const line = this.#pending.shift();
    if (line === undefined) { this.#blocked = false; return; }
    const size = lineBytes(line);
    this.#bytes -= size;
    const batch = (this.#resumed ? '\n' : '') + line + '\n';
    this.#resumed = false;
    const out = this.#out!;
    this.#probing = true;
    out.write(batch, (err) => {
      this.#probing = false;
      if (err) {
        // The stream's 'error' blocks the output and opens it again later (#fail).
        if (!this.#closed) { this.#pending.unshift(line); this.#bytes += size; this.#resumed = true; } else this.dropped++;
        return;
      }
      this.lines++;
      if (this.#out !== out) return;
      if (this.#pending.length > 0 && !this.#closed) { this.#probe(); return; }
      // Every waiting line is written: the output has recovered, and says so once.
      if (this.#reported) { this.#reported = false; this.#report?.(false); }
      this.#blocked = false;
      this.flush();
    });
  }

  /** Lines waiting for the output (the one a probe is trying too: it waits again if it fails), and their share of maxBufferBytes. */
  fill(): TableFill {
    return { entries: this.#pending.length + (this.#probing ? 1 : 0), fill: this.#bytes / this.#maxBytes };
  }

  /** `utf8`: the line's UTF-8 length, if the caller has it. */
  write(line: string, utf8 = Buffer.byteLength(line, 'utf8')): void {
    if (!this.#out) return;
    if (this.#failed) { this.dropped++; return; }
    const size = lineBytes(line, utf8);
    // Full, but the output can take more: write out what waits first. A line is dropped only
    // while the output cannot keep up, not because a burst outran the flush timer.
    if (this.#bytes + size > this.#maxBytes && !this.#blocked) this.flush();
    if (this.#bytes + size > this.#maxBytes) { this.dropped++; return; }
    this.#pending.push(line);
    this.#bytes += size;
    if (this.#bytes >= FLUSH_BYTES) this.flush();
    else if (!this.#timer) {
      this.#timer = setTimeout(() => { this.#timer = undefined; this.flush(); }, FLUSH_MS);
      this.#timer.unref();
    }
  }

  flush(): void {
    if (this.#timer) { clearTimeout(this.#timer); this.#timer = undefined; }
    if (!this.#out || this.#blocked || this.#pending.length === 0) return;
    if (this.#path !== undefined) {
      this.#followRotation();
      if (this.#blocked) return;
    }
    // A failed write may have left part of a line: the batch then starts a line of its own.
    const batch = (this.#resumed ? '\n' : '') + this.#pending.join('\n') + '\n';
    this.#resumed = false;
    const count = this.#pending.length;
    this.#pending = [];
    this.#bytes = 0;
    try {
      const more = this.#out.write(batch, (err) => {
        if (err) { this.dropped += count; return; }
        this.lines += count;
        if (this.#reported) { this.#reported = false; this.#report?.(false); }
      });
      if (!more && !this.#failed) {
        this.#blocked = true;
        const out = this.#out;
        out.once('drain', () => { if (this.#failed || this.#out !== out) return; this.#blocked = false; this.flush(); });
      }
    } catch {
      this.dropped += count;
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    // Waiting for its path to be opened again: once more now, or what waits is dropped, not
    // written into the file the path no longer names (a deleted one) and counted as written.
    if (this.#reopen) {
      clearTimeout(this.#reopen);
      this.#reopen = undefined;
      if (this.#reopenFile((old) => { old.destroy(); })) { this.dropped += this.#pending.length; this.#pending = []; this.#bytes = 0; }
    }
    if (!this.#failed) this.#blocked = false;
    this.flush();
    const file = this.#file;
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
  }
}

/**
 * A waiting line's share of maxBufferBytes: the bytes written, or held if more (a line with a
 * character beyond ASCII, a subject, a detail, is written as UTF-8 and held at two bytes a
 * character), and its newline.
 */
function lineBytes(line: string, utf8 = Buffer.byteLength(line, 'utf8')): number {
  return Math.max(utf8, heldBytes(line.length, utf8)) + 1;
}

/** Whether the file at `path` is not empty and does not end with a newline. */
function endsMidLine(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    if (size === 0) return false;
    const last = Buffer.alloc(1);
    return readSync(fd, last, 0, 1, size - 1) === 1 && last[0] !== 0x0a;
  } catch {
    // Not readable (not a regular file, say): a line of its own anyway.
    return true;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
