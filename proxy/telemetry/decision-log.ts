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
  lines = 0;
  dropped = 0;

  constructor(output: LogOutput, maxBufferBytes: number) {
    this.#maxBytes = maxBufferBytes;
    if (output.kind === 'file') {
      // Open now so that a bad path stops start-up with its name, not the first request.
      const fd = openSync(output.file, 'a', 0o640);
      const stream = createWriteStream('', { fd });
      stream.on('error', () => { /* a failing disk must not crash the proxy; lines are dropped */ this.#blocked = true; });
      this.#out = this.#file = stream;
    } else {
      this.#out = output.kind === 'stdout' ? process.stdout : output.kind === 'stderr' ? process.stderr : undefined;
      // A reader that goes away (a log shipper restarting, `| head`) makes the pipe fail with
      // EPIPE as an 'error' event: unheard, it ended the process. Lines are dropped from then on.
      this.#out?.on('error', () => { this.#blocked = true; });
    }
  }

  get enabled(): boolean { return this.#out !== undefined; }

  /** Lines waiting for the output, and their share of maxBufferBytes. */
  fill(): TableFill {
    return { entries: this.#pending.length, fill: this.#bytes / this.#maxBytes };
  }

  /** `utf8`: the line's UTF-8 length, if the caller has it. */
  write(line: string, utf8 = Buffer.byteLength(line, 'utf8')): void {
    if (!this.#out) return;
    // Bytes written, or held if more: a line with a character beyond ASCII (a subject, a
    // detail) is written as UTF-8 and held at two bytes a character.
    const size = Math.max(utf8, heldBytes(line.length, utf8)) + 1;
    // Full, but the output can take more: write out what waits first. A line is dropped only
    // while the output cannot keep up, not because a burst outran the flush timer.
    if (this.#bytes + size > this.#maxBytes && !this.#blocked) this.flush();
    if (this.#bytes + size > this.#maxBytes) { this.dropped++; return; }
    this.#pending.push(line);
    this.#bytes += size;
    this.lines++;
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
    this.#pending = [];
    this.#bytes = 0;
    try {
      if (!this.#out.write(batch)) {
        this.#blocked = true;
        this.#out.once('drain', () => { this.#blocked = false; this.flush(); });
      }
    } catch {
      this.dropped++;
    }
  }

  async close(): Promise<void> {
    this.#blocked = false;
    this.flush();
    const file = this.#file;
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
  }
}
