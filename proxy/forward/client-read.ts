// An answer's body on its way from the upstream to the client, for both terminal stages (a
// request's Exchange, a handshake's Tunnel when the upstream does not switch protocols):
// back-pressure, and proxy.timeouts.clientRead.

import type { Dispatcher } from 'undici';

/** What the body is written to: the client's response, or its socket. */
interface Writable {
  once(event: 'drain', listener: () => void): unknown;
  off(event: 'drain', listener: () => void): unknown;
}

/**
 * A chunk the client's socket does not take at once pauses the upstream until it drains; the
 * upstream holds a pool connection meanwhile. A client that reads just often enough to stay
 * under clientIdle held one for as long as it liked (as many slow readers as
 * proxy.connections, and every other caller got 504s): the waits of one answer may add up to
 * proxy.timeouts.clientRead, then `cut` ends it. An answer the client takes as fast as it
 * comes never waits, however long it streams; made at an answer's first wait, so that one
 * never costs anything.
 */
export class ClientRead {
  readonly #to: Writable;
  /** proxy.timeouts.clientRead (0: no limit). */
  readonly #limitMs: number;
  readonly #cut: () => void;
  #controller?: Dispatcher.DispatchController;
  /** Waited for the client so far, and since when while it does (undefined: not waiting). */
  #waitedMs = 0;
  #since?: number;
  #timer?: NodeJS.Timeout;
  #slow = false;

  constructor(to: Writable, limitMs: number, cut: () => void) {
    this.#to = to;
    this.#limitMs = limitMs;
    this.#cut = cut;
  }

  /** Cut for waiting longer than clientRead: its record says so, not that the client left. */
  get slow(): boolean { return this.#slow; }

  /** A write the client did not take at once: pause the upstream until the client drains. */
  wait(controller: Dispatcher.DispatchController): void {
    controller.pause();
    // Waiting already: undici may hand over what it had read while paused (its parser resumes
    // across a pause when the upstream's connection ends). A second listener and timer would
    // outlive stop(): one drain resumed twice, and the first timer cut the answer later.
    if (this.#since !== undefined) return;
    this.#controller = controller;
    this.#since = performance.now();
    this.#to.once('drain', this.#onDrain);
    if (this.#limitMs === 0) return;
    this.#timer = setTimeout(() => { this.#slow = true; this.#cut(); }, Math.max(0, this.#limitMs - this.#waitedMs));
    this.#timer.unref();
  }

  #onDrain = (): void => {
    if (this.#since !== undefined) this.#waitedMs += performance.now() - this.#since;
    this.#since = undefined;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#controller?.resume();
  };

  /** The answer ended, or was cut: nothing waits any more. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#to.off('drain', this.#onDrain);
  }
}
