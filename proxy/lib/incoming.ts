// A request whose body chunks are kept as few buffers, not one per chunk. Node's parser hands
// each chunk of a chunked body (and each read of one with a length) to the request as a Buffer
// of its own, about 300 bytes of heap beside its bytes, and a request waiting to be read
// keeps them until its stream's high-water mark, 64 KiB, counted in bytes: a body sent one
// byte a chunk (`1\r\na\r\n`) held about 20 MiB of heap per request, and a few connections
// waiting on a slow upstream ran a 96 MiB heap out. Small chunks are copied into one buffer,
// pushed once the parser is done with what it read (or when the buffer is full, a large
// chunk comes, or the body ends), so the request's buffer holds a few objects, whatever the
// client's chunking.
//
// Installed on the request, not by a subclass of IncomingMessage: undici, when it destroys a
// request body it was sending, detaches the socket first only from an IncomingMessage itself,
// and a subclass's destroy closed the client's connection before its 502 could be written.

import { Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';

/**
 * Emitted on a request whose body Node's parser gave up on while the request was being decided
 * (the connection ended mid-body, a bad chunk): the body will never end, and a read of it
 * stops at once instead of waiting out its timeout. Node itself says nothing to the request.
 */
export const BODY_UNPARSABLE = 'driftguard:body-unparsable';

/** The requests BODY_UNPARSABLE was emitted on: a read that starts after the event sees it here, and the server forwards none of them. */
export const unparsableBodies = new WeakSet<IncomingMessage>();

/**
 * Header lines a request may have, on every listener (Envoy's default too); Node refuses a head
 * with more, as too large (431). A head still arriving holds a string per line: at most these,
 * about 20 KiB of heap, not one per line of the 16 KiB (about 50 KiB).
 */
export const MAX_HEADER_LINES = 100;

/** Chunks smaller than this are copied together; larger ones are pushed as they are. */
const SMALL = 4 * 1024;
const GATHER = 16 * 1024;
/**
 * Small chunks are pushed at most this often: a body sent a byte per TCP segment arrives one
 * read at a time, and each read pushed alone was still a Buffer object per byte, held by the
 * upstream connection's write queue once the upstream stopped reading (64 such requests kept
 * the chart's heap near its limit). A client that trickles slower is not delayed.
 */
const MIN_FLUSH_MS = 5;

/**
 * Pieces (chunks of a chunked body, or reads of one with a length) of the bodies driftguard
 * reads only to discard them (a refused request's, read to its end so that its connection
 * stays open) that one connection may send, past which, if they average under TINY_BYTES, it
 * is closed (Discarded). Node's parser hands each piece to JavaScript alone, so a body sent a
 * byte a chunk (`1\r\na\r\n`) cost the one thread about 13 times what the same bytes cost in
 * one piece (1.4 s for 6 MB against 0.1 s), with no token needed: four such connections held
 * every other caller's answers for hundreds of milliseconds. Counted per connection, not per
 * request: refused request after refused request, each under the bound, cost the same. A body
 * forwarded to the upstream is not counted: its caller was allowed, and a stream of short rows
 * (fetch with a ReadableStream, a generator) is a chunk a row.
 */
export const MAX_TINY_PIECES = 16 * 1024;
const TINY_BYTES = 16;

/** One connection's pieces of discarded bodies (MAX_TINY_PIECES). */
export class Discarded {
  #pieces = 0;
  #bytes = 0;

  /** Count `pieces` pieces of `bytes` in all; whether the connection has now sent too many tiny ones. */
  tooTiny(bytes: number, pieces = 1): boolean {
    this.#bytes += bytes;
    this.#pieces += pieces;
    return this.#pieces > MAX_TINY_PIECES && this.#bytes < this.#pieces * TINY_BYTES;
  }
}

/** One request's body pieces before it is refused: added to its connection's Discarded when it is (all of them may come while it is decided). */
export class Tally {
  pieces = 0;
  bytes = 0;
  /** Refused: its pieces from now on are counted in `discarded` as they come. */
  refused = false;
  readonly discarded: Discarded;
  constructor(discarded: Discarded) { this.discarded = discarded; }
}

const push = Readable.prototype.push;

class Gatherer {
  readonly #req: IncomingMessage;
  /**
   * Filled from its start; what was pushed already is a view of its first part. One buffer
   * for many pushes: a fresh one for each, pushed with a few bytes in it, held its whole 16
   * KiB per push (20 connections' bodies held 1.3 GB outside the heap).
   */
  #gathered?: Buffer;
  /** A lone small chunk not pushed yet: copied only once a second comes (a usual body is one chunk). */
  #held?: Buffer;
  /** Where what is not pushed yet begins, and ends. */
  #start = 0;
  #length = 0;
  #flushing = false;
  /** When small chunks were last pushed (performance.now()). */
  #flushedAt = -Infinity;
  /**
   * The reader asked for more (_read) and nothing has been pushed since: the stream will not
   * ask again until something is, so what is gathered must go even if the reader has paused.
   */
  #wanted = false;

  /** Told of each piece, until it says to stop: the piece is then dropped (the connection is cut). */
  #onPiece: ((bytes: number) => boolean) | undefined;

  constructor(req: IncomingMessage, onPiece?: (bytes: number) => boolean) { this.#req = req; this.#onPiece = onPiece; }

  push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
    const req = this.#req;
    if (this.#onPiece && Buffer.isBuffer(chunk) && this.#onPiece(chunk.length)) {
      this.#onPiece = undefined;
      return false;
    }
    if (!Buffer.isBuffer(chunk) || chunk.length >= SMALL) {
      this.#flush();
      this.#wanted = false;
      return push.call(req, chunk, encoding);
    }
    if (this.#gathered && this.#length + chunk.length > this.#gathered.length) {
      this.#flush();
      this.#gathered = undefined;
    }
    if (!this.#gathered && this.#held === undefined && this.#length === this.#start) {
      this.#held = chunk;
    } else {
      if (!this.#gathered) { this.#gathered = Buffer.allocUnsafe(GATHER); this.#start = this.#length = 0; }
      const held = this.#held;
      if (held) { held.copy(this.#gathered, this.#length); this.#length += held.length; this.#held = undefined; }
      chunk.copy(this.#gathered, this.#length);
      this.#length += chunk.length;
    }
    // Once the parser is done with what it read: a body trickled in small reads still reaches
    // the upstream as it arrives. Not process.nextTick: Node runs the tick queue after each of
    // the parser's callbacks, so every chunk was pushed alone.
    if (!this.#flushing) {
      this.#flushing = true;
      const wait = this.#flushedAt + MIN_FLUSH_MS - performance.now();
      if (wait > 0) setTimeout(this.#flushLater, wait); else setImmediate(this.#flushLater);
    }
    // What push() would say had the chunk gone in: false stops reading the socket.
    return req.readableLength + this.#length - this.#start + (this.#held?.length ?? 0) < req.readableHighWaterMark;
  };

  #flushLater = (): void => {
    this.#flushing = false;
    this.#flushedAt = performance.now();
    // Nobody reads yet (the request waits for its decision or a pool connection) and some is
    // already buffered: kept here, in one buffer, until the reader asks (flushNow, from _read).
    const req = this.#req;
    if (!this.#wanted && req.readableFlowing !== true && req.readableLength > 0) return;
    this.#flush();
  };

  /** The reader wants more (_read): what is gathered goes now, or the next that comes. */
  want(): void {
    this.#wanted = true;
    this.#flush();
  }

  #flush(): void {
    const held = this.#held;
    if (held) {
      this.#held = undefined;
      this.#wanted = false;
      if (!this.#req.destroyed) push.call(this.#req, held);
      return;
    }
    if (this.#length === this.#start) return;
    const bytes = this.#gathered!.subarray(this.#start, this.#length);
    this.#start = this.#length;
    this.#wanted = false;
    if (!this.#req.destroyed) push.call(this.#req, bytes);
  }
}

/**
 * From now on, `req`'s small body chunks are gathered into few buffers (call it as the request
 * arrives); `onPiece` is told of each piece, until it returns true (the connection is cut).
 */
export function gatherSmallChunks(req: IncomingMessage, onPiece?: (bytes: number) => boolean): void {
  const gatherer = new Gatherer(req, onPiece);
  req.push = gatherer.push;
  const read = req._read;
  req._read = (size: number) => { gatherer.want(); read.call(req, size); };
}
