// HTTP/1.1 pipelining on the traffic listener: the requests of one connection, in the order
// they arrived, each started once the answer before it is done. Node hands over every request
// of what it has read and answers them in order; handled all at once, one connection that never
// read its answers held the whole upstream pool and ran the heap out (an unauthenticated GET of
// a public operation repeated 12,000 times in one write). So a connection holds one upstream
// call at most, and what waits behind it is bounded per connection and on all connections
// together: past a bound, a connection is cut as a flood.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Discarded } from './incoming.ts';

/** Pipelined requests of one connection that may wait for the answer before theirs. */
export const MAX_PIPELINED = 32;
/**
 * Pipelined requests waiting for their turn, on all connections together. A waiting request's
 * head is parsed and held (up to about 16 KiB of heap): 32 on each of 256 connections would be
 * 130 MiB, and 200 connections of them ran the chart's 96 MiB heap out. Past this, the
 * connection holding the most is cut as a flood, if it holds FLOOD_SHARE of them; else the one
 * that would add one.
 */
export const MAX_WAITING = 128;
/** Waiting requests of one connection that make it the flood to cut when all MAX_WAITING places are taken. */
const FLOOD_SHARE = MAX_WAITING / 8;

/** One request of a connection, in the order they arrived. */
export interface Turn {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** Its connection, kept here: Node takes it off a request whose body it has read (req.socket is null then). */
  readonly socket: Socket;
  /** Its answer is done, or it was dropped: the request after it may start. */
  done: boolean;
  /** It waits for the answer before its own: nothing of it has been handled yet. */
  waiting?: boolean;
  /** Dropped while it waited (its own bytes could not be parsed): its turn does not handle it. */
  dropped?: boolean;
  /** Starts the request after it, once it is done. */
  then?: () => void;
}

/** One connection's requests. */
export interface Pipeline {
  /** The latest request to arrive. */
  last?: Turn;
  /** Requests arrived and not done: being answered or waiting. */
  open: number;
  /** Requests with a body waiting for the answer before theirs (at most one). */
  bodies: number;
  /** Cut (a flood, or a request read after the drain began): nothing more of it is handled. */
  cut: boolean;
  /** Pieces of the refused bodies it sent, read to be discarded (incoming.ts, MAX_TINY_PIECES). */
  discarded?: Discarded;
}

/** What became of a request that arrived (Pipelining.arrive). */
export type Arrival =
  /** Nothing is before it: start it now. */
  | 'now'
  /** It waits for the answer before it: `turn` is called when that is done. */
  | 'waits'
  /** Its connection is cut (a flood, or cut before): it is not handled. */
  | 'cut';

export interface FloodCuts {
  /**
   * Destroy a flood's connection. `limit`: the bound it went past (waiting on the connection,
   * waiting bodies, waiting on all connections).
   */
  cut(socket: Socket, limit: number): void;
}

export class Pipelining {
  readonly #lines = new WeakMap<Socket, Pipeline>();
  /** The listener's open connections: the heaviest is found among them. */
  readonly #sockets: ReadonlySet<Socket>;
  readonly #floods: FloodCuts;
  /** Requests waiting for their turn, on every connection (MAX_WAITING). */
  #waiting = 0;

  constructor(sockets: ReadonlySet<Socket>, floods: FloodCuts) {
    this.#sockets = sockets;
    this.#floods = floods;
  }

  /** A connection was accepted. */
  connected(socket: Socket): void {
    this.#lines.set(socket, { open: 0, bodies: 0, cut: false });
  }

  of(socket: Socket): Pipeline | undefined {
    return this.#lines.get(socket);
  }

  /**
   * Take a request in its connection's order. A connection with more than MAX_PIPELINED waiting
   * is a flood, and is cut. Node goes on reading meanwhile, and buffers each waiting body whole
   * up to its stream's high-water mark (64 KiB): so one waiting request with a body at most
   * (RFC 9112 §9.3.2: a client does not pipeline after a non-idempotent request), or 32 of them
   * held 2 MB per connection, unauthenticated.
   *
   * `turn` runs it when it waited ('waits'): it is called with the wait already given back.
   */
  arrive(line: Pipeline, request: Turn, body: boolean, draining: boolean, turn: () => void): Arrival {
    const before = line.last;
    // Until its body has arrived, a parser error or timeout on this connection belongs to this
    // request, which has (or will have) its own answer: the connection is then cut, not answered twice.
    line.last = request;
    // Cut as a flood: what else was read with it is not decided either.
    if (line.cut) return 'cut';
    // Read after the drain began (the rest of a head that was arriving, or a request on a
    // connection kept alive by an answer sent before): nobody will be left to answer it. Its
    // connection is closed at once when it has nothing else in flight, else when the answer in
    // flight is done (finish).
    if (draining) {
      line.cut = true;
      if (!before || before.done) request.socket.destroy();
      return 'cut';
    }
    line.open++;
    if (line.open > MAX_PIPELINED + 1) return this.#floodCut(request, line, MAX_PIPELINED);
    if (!before || before.done) return 'now';
    if (body && line.bodies > 0) return this.#floodCut(request, line, 1);
    // All places taken: a connection holding a flood's share of them (FLOOD_SHARE) is the
    // flood, not this one. Its waiting requests go when the answer before them ends (at once,
    // for its cut upstream call), so this one may wait meanwhile: at most one more per
    // connection cut, each of which held many. Places filled thinly, by many connections of a
    // few each, cut the newcomer, as any flood without a heavy connection: else each newcomer
    // would cut whichever established client pipelines a few more than it.
    if (this.#waiting >= MAX_WAITING) {
      const flood = this.#heaviest();
      if (!flood || flood.line === line || flood.line.open - 1 < FLOOD_SHARE || flood.line.open <= line.open + 1) return this.#floodCut(request, line, MAX_WAITING);
      flood.line.cut = true;
      this.#floods.cut(flood.socket, MAX_WAITING);
    }
    if (body) line.bodies++;
    this.#waiting++;
    request.waiting = true;
    before.then = () => {
      this.#waiting--;
      if (body) line.bodies--;
      request.waiting = false;
      turn();
    };
    return 'waits';
  }

  /**
   * A request's answer is done (or it was dropped): the one after it goes on. True when it was
   * its connection's last open request.
   */
  finish(request: Turn, line: Pipeline | undefined): boolean {
    if (request.done) return false;
    request.done = true;
    if (line) line.open--;
    const then = request.then;
    request.then = undefined;
    then?.();
    return line !== undefined && line.open === 0;
  }

  /** The connection, not yet cut, with the most requests open (waiting, and the one answered before them). */
  #heaviest(): { socket: Socket; line: Pipeline } | undefined {
    let most: { socket: Socket; line: Pipeline } | undefined;
    for (const socket of this.#sockets) {
      const line = this.#lines.get(socket);
      if (line && !line.cut && !socket.destroyed && (!most || line.open > most.line.open)) most = { socket, line };
    }
    return most;
  }

  /** A pipelining flood: the request is dropped and its connection cut. */
  #floodCut(request: Turn, line: Pipeline, limit: number): 'cut' {
    request.done = true;
    line.open--;
    line.cut = true;
    // The rest of what was read still arrives, one request at a time.
    if (!request.socket.destroyed) this.#floods.cut(request.socket, limit);
    return 'cut';
  }
}
