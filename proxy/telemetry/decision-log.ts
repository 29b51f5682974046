// The decision log: one JSON line per decision, collected in memory and written in batches
// (every 100 ms, or sooner once 64 KiB are waiting), so a request never waits on a write.
// When the output cannot keep up, at most maxBufferBytes wait; further lines are dropped and
// counted rather than growing memory without bound or slowing requests.

import { createWriteStream, openSync, type WriteStream } from 'node:fs';
import type { LogOutput } from './config.ts';
import { heldBytes, type TableFill } from '../lib/heap.ts';

const FLUSH_MS = 100;
const FLUSH_BYTES = 64 * 1024;

export class DecisionLog {
  readonly #out?: NodeJS.WritableStream;
  readonly #maxBytes: number;
  /** The file stream it opened itself, ended at close (stdout and stderr are left open). */
  readonly #file?: WriteStream;
  #pending: string[] = [];
  #bytes = 0;
  #timer?: NodeJS.Timeout;
  /** The output refused more (back-pressure): wait for 'drain' before the next write. */
  #blocked = false;
  /** The output failed (a full disk, a reader gone): nothing is written from then on. */
  #failed = false;
  /** Lines the output took (counted when their batch's write completed). */
  lines = 0;
  /** Lines refused (the buffer was full, or the output had failed) or lost with a failed write. */
  dropped = 0;

  constructor(output: LogOutput, maxBufferBytes: number) {
    this.#maxBytes = maxBufferBytes;
    if (output.kind === 'file') {
      // Open now so that a bad path stops start-up with its name, not the first request.
      const fd = openSync(output.file, 'a', 0o640);
      const stream = createWriteStream('', { fd });
      // A failing disk must not crash the proxy: lines are dropped, and counted.
      stream.on('error', () => this.#fail());
      this.#out = this.#file = stream;
    } else {
      this.#out = output.kind === 'stdout' ? process.stdout : output.kind === 'stderr' ? process.stderr : undefined;
      // A reader that goes away (a log shipper restarting, `| head`) makes the pipe fail with
      // EPIPE as an 'error' event: unheard, it ended the process. Lines are dropped from then on.
      this.#out?.on('error', () => this.#fail());
    }
  }

  get enabled(): boolean { return this.#out !== undefined; }

  #fail(): void {
    this.#failed = this.#blocked = true;
    this.dropped += this.#pending.length;
    this.#pending = [];
    this.#bytes = 0;
  }

  /** Lines waiting for the output, and their share of maxBufferBytes. */
  fill(): TableFill {
    return { entries: this.#pending.length, fill: this.#bytes / this.#maxBytes };
  }

  /** `utf8`: the line's UTF-8 length, if the caller has it. */
  write(line: string, utf8 = Buffer.byteLength(line, 'utf8')): void {
    if (!this.#out) return;
    if (this.#failed) { this.dropped++; return; }
    // Bytes written, or held if more: a line with a character beyond ASCII (a subject, a
    // detail) is written as UTF-8 and held at two bytes a character.
    const size = Math.max(utf8, heldBytes(line.length, utf8)) + 1;
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
    const batch = this.#pending.join('\n') + '\n';
    const count = this.#pending.length;
    this.#pending = [];
    this.#bytes = 0;
    try {
      const more = this.#out.write(batch, (err) => { if (err) this.dropped += count; else this.lines += count; });
      if (!more && !this.#failed) {
        this.#blocked = true;
        this.#out.once('drain', () => { if (this.#failed) return; this.#blocked = false; this.flush(); });
      }
    } catch {
      this.dropped += count;
    }
  }

  async close(): Promise<void> {
    if (!this.#failed) this.#blocked = false;
    this.flush();
    const file = this.#file;
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
  }
}
