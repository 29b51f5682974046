// The terminal stage for a WebSocket handshake the decision let through. The handshake goes to
// the upstream with its Upgrade; when the upstream switches protocols (101), the client's
// connection and the upstream's are joined byte for byte, and back-pressure flows both ways
// through pipe(). driftguard decides once, on the handshake (consumer, operation and contract
// version are all known then) and never reads the frames. An upstream that refuses the
// upgrade answers the client itself: its status, headers and body, then the connection closes.

import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { clientResponseHeaders, withOwnHeaders } from './headers.ts';
import { cutAnswer, endAndClose, responseHead } from './wire.ts';
import { GrowingBuffer } from '../lib/bounded.ts';
import { ClientRead } from './client-read.ts';
import { CLIENT_CLOSED, clientCut, connectionWaitTimeout, idleClosed, errorCode, expireIfWaiting, failed, InterimWait, statusError, transferCodingError, UPSTREAM_UPGRADE_MISMATCH, type ForwardOutcome, type Queued } from './outcome.ts';

/**
 * How long a tunnel may carry no byte once one side has ended its half (sent its FIN) and the
 * other has not: the end is passed on, and a side that keeps its half open regardless (an
 * upstream that ignores the client's close) no longer holds both connections, and a place
 * among proxy.clientConnections, for the idle limit (an hour by default). HAProxy's
 * client-fin and server-fin timeouts do the same.
 */
export const HALF_CLOSED_MS = 10_000;

/** Most a client may send after its handshake before the upstream has switched protocols. */
const MAX_EARLY_BYTES = 64 * 1024;

/**
 * The client's connection while its handshake is decided and forwarded. It is read, not left
 * paused: on a paused, half-open socket a client that leaves (its FIN) is never seen, and its
 * handshake would still be forwarded, an upstream WebSocket opened for nobody and the decision
 * recorded as a 101. A FIN now closes the connection, which the server and the tunnel see as the
 * client leaving. Bytes that arrive meanwhile (RFC 6455 §4.1 says a client waits for the
 * answer, but some send their first frame at once) are kept for the upstream, up to 64 KiB.
 */
export class EarlyBytes {
  readonly #socket: Socket;
  /** What arrived, in one buffer (not a Buffer object per read). */
  readonly #kept: GrowingBuffer;
  /** Ends the connection when the client leaves or sends too much (Tunnel: reset once an answer streams). */
  #close = (): void => { this.#socket.destroy(); };

  constructor(socket: Socket, head: Buffer) {
    this.#socket = socket;
    this.#kept = new GrowingBuffer(MAX_EARLY_BYTES, head);
    socket.on('data', this.#onData);
    socket.once('end', this.#onEnd);
  }

  /** How the connection is ended, from now on. */
  closeWith(close: () => void): void { this.#close = close; }

  #onData = (chunk: Buffer): void => {
    if (!this.#kept.add(chunk)) this.#close();
  };

  #onEnd = (): void => { this.#close(); };

  /** Stop reading (the tunnel's pipe() reads on) and hand over what arrived. */
  take(): Buffer {
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.pause();
    return this.#kept.bytes;
  }
}

export class Tunnel implements Dispatcher.DispatchHandler, Queued {
  readonly #client: Socket;
  /** Bytes the client sent after its handshake, before the upstream switched protocols. */
  readonly #early: EarlyBytes;
  readonly #responseHeaders: Record<string, string | string[]>;
  readonly #resolve: (outcome: ForwardOutcome) => void;
  /** Longest silence both ways before the tunnel is closed; 0: none. */
  readonly #idleMs: number;
  /** Longest a refusal's answer may wait for a client that does not read it; 0: none. */
  readonly #clientIdleMs: number;
  /** proxy.timeouts.clientRead (0: no limit). */
  readonly #clientReadMs: number;
  /** The final answer's wait once an interim one came (forward.ts, Exchange). */
  readonly #interim: InterimWait;
  /**
   * A refusal's waits for its client, from the first: cut once they add up to clientRead. An
   * Upgrade header was a way around it, a slow reader of a large refusal (or of a stream an
   * upstream without a WebSocket route serves the handshake's GET) holding a pool connection.
   */
  #reads?: ClientRead;
  #controller?: Dispatcher.DispatchController;
  /** The status written to the client, once one is. */
  #status?: number;
  #done = false;
  /** Set while the handshake waits for a pool connection with a deadline (waitAtMost). */
  #wait?: NodeJS.Timeout;
  #expired = false;

  constructor(client: Socket, early: EarlyBytes, responseHeaders: Record<string, string | string[]>, idle: { readonly tunnelIdleMs: number; readonly clientIdleMs: number; readonly clientReadMs: number; readonly responseMs: number }, resolve: (outcome: ForwardOutcome) => void) {
    this.#client = client;
    this.#early = early;
    this.#responseHeaders = responseHeaders;
    this.#idleMs = idle.tunnelIdleMs;
    this.#clientIdleMs = idle.clientIdleMs;
    this.#clientReadMs = idle.clientReadMs;
    this.#interim = new InterimWait(idle.responseMs);
    this.#resolve = resolve;
    client.once('close', this.#onClose);
    // An answer the upstream gave without switching runs to the close: cut while it streams, it
    // is reset, so that what the client read cannot look whole; before or after it, a close.
    early.closeWith(() => { if (this.#status !== undefined && !this.#done) cutAnswer(client); else client.destroy(); });
  }

  #onClose = (): void => {
    if (this.#done) return;
    // Finished first: the abort calls onResponseError at once, which recorded the client's
    // leaving as an upstream error (UNKNOWN), counted as an upstream cut.
    this.#finish({ ...(this.#status !== undefined ? { status: this.#status } : {}), aborted: true, error: clientCut(this.#client, this.#reads?.slow) });
    this.#controller?.abort(new Error('the client closed the connection'));
  };

  #finish(outcome: ForwardOutcome): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#wait);
    this.#interim.stop();
    this.#reads?.stop();
    this.#client.off('close', this.#onClose);
    this.#resolve(outcome);
  }

  get started(): boolean { return this.#controller !== undefined; }

  /**
   * Withdraw the handshake before the upstream's answer began (forward.ts withdraw): it is a
   * GET, which the upstream may have read but acted on in no way a client sees before its
   * answer, so the client gets the refusal's problem (the caller writes it) rather than a
   * reset that says nothing. false once an answer has begun, or the forward is done.
   */
  withdraw(outcome: ForwardOutcome): boolean {
    if (this.#done || this.#status !== undefined) return false;
    // Still waiting for a pool connection: nothing went upstream, no upstream call to record.
    this.#finish(this.#controller ? outcome : { ...outcome, notSent: true });
    this.#controller?.abort(new Error('withdrawn before the upstream answered'));
    return true;
  }

  waitAtMost(ms: number): void {
    this.#wait = expireIfWaiting(ms, () => !this.#controller && !this.#done, (err) => { this.#expired = true; this.onResponseError(undefined as never, err); });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    clearTimeout(this.#wait);
    this.#controller = controller;
    if (this.#client.destroyed) controller.abort(new Error('the client closed the connection'));
    else if (this.#expired) controller.abort(connectionWaitTimeout());
    else if (this.#done) controller.abort(new Error('withdrawn before it was sent'));
  }

  onRequestUpgrade(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>, upstream: Duplex): void {
    this.#interim.stop();
    const client = this.#client;
    if (this.#done || client.destroyed) { upstream.destroy(); return; }
    // Only to what was asked (RFC 9110 §7.8): a 101 to h2c, say, would open a channel of
    // requests no check sees. undici refuses a 101 without Upgrade before this.
    const upgrade = headers.upgrade;
    if (typeof upgrade !== 'string' || upgrade.trim().toLowerCase() !== 'websocket') {
      upstream.destroy();
      this.#finish(failed(UPSTREAM_UPGRADE_MISMATCH));
      return;
    }
    // Upgrade and Connection are hop-by-hop, so clientResponseHeaders drops them: they are
    // this hop's answer to this hop's request, written here.
    client.write(responseHead(statusCode, { ...withOwnHeaders(clientResponseHeaders(headers), this.#responseHeaders), connection: 'Upgrade', upgrade }), 'latin1');
    this.#status = statusCode;
    const head = this.#early.take();
    if (head.length > 0) upstream.write(head);
    // Half-open, as the client's is (Node's HTTP server allows it): an upstream that ends its
    // half (its FIN) still takes what the client sends until the client ends too. undici
    // hands the socket over allowing no half-open, which closed the whole tunnel at once.
    (upstream as Duplex & { allowHalfOpen: boolean }).allowHalfOpen = true;
    // Either side closing or failing ends both.
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
    client.once('close', () => upstream.destroy());
    upstream.pipe(client);
    client.pipe(upstream);
    // Either side ended its half: from then on the tunnel may be silent HALF_CLOSED_MS at most
    // (or its idle limit, if shorter), then both are cut. Silent, not open: the other side may
    // still be sending what it has (a download after the client's end), and every byte either
    // way passes the client's socket, whose idle timer this is.
    let halfClosed = false;
    const onEnd = () => {
      if (halfClosed) return;
      halfClosed = true;
      client.setTimeout(this.#idleMs > 0 ? Math.min(this.#idleMs, HALF_CLOSED_MS) : HALF_CLOSED_MS, () => client.destroy());
    };
    client.once('end', onEnd);
    upstream.once('end', onEnd);
    // Every byte either way is read or written on the client's socket, so its timer is the
    // tunnel's: a peer that vanished without closing (a node lost, a network partition) would
    // otherwise hold both connections, and a request in flight, until the process ends.
    // (0: no limit; that also clears the client idle timeout the server set for the handshake.)
    if (this.#idleMs > 0) client.setTimeout(this.#idleMs, () => client.destroy());
    else client.setTimeout(0);
    this.#finish({ status: statusCode });
  }

  /** undici wrote the handshake's last byte. */
  onRequestSent(): void { this.#interim.sent(); }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    // 1xx: informational, the final answer follows, within proxy.timeouts.response.
    if (statusCode < 200) { this.#interim.interim(controller); return; }
    this.#interim.stop();
    const odd = statusError(statusCode);
    if (odd) { controller.abort(odd); return; }
    // A 502, as for any request: the refusal's body would reach the client still coded.
    const coding = statusCode === 204 || statusCode === 304 ? undefined : transferCodingError(headers['transfer-encoding']);
    if (coding) { controller.abort(coding); return; }
    // The upstream refused the upgrade. Its answer is the client's, and the connection closes
    // after it: without a Content-Length the body runs to the close (RFC 9112 §6.3).
    this.#status = statusCode;
    // Node dropped its idle timer from the socket when it handed it over for the upgrade, and
    // undici's body timeout stops while the answer waits for the client: a client that never
    // reads a large refusal would hold this connection, and a pool connection, for ever.
    // Reset, not ended: the answer runs to the close, and a FIN made a cut one look whole.
    if (this.#clientIdleMs > 0) this.#client.setTimeout(this.#clientIdleMs, () => { idleClosed.add(this.#client); cutAnswer(this.#client); });
    this.#client.write(responseHead(statusCode, { ...withOwnHeaders(clientResponseHeaders(headers), this.#responseHeaders), connection: 'close' }), 'latin1');
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#client.write(chunk)) return;
    const client = this.#client;
    (this.#reads ??= new ClientRead(client, this.#clientReadMs, () => cutAnswer(client))).wait(controller);
  }

  onResponseEnd(): void {
    const status = this.#status!;
    endAndClose(this.#client, undefined, () => this.#finish({ status }));
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    // Settled already: an abort after a connection-wait timeout, whose 504 is the server's.
    if (this.#done) return;
    const code = errorCode(err);
    if (this.#status !== undefined) {
      cutAnswer(this.#client);
      this.#finish({ status: this.#status, aborted: true, error: code });
    } else if (this.#client.destroyed) {
      this.#finish({ aborted: true, error: CLIENT_CLOSED });
    } else {
      // No onRequestStart: undici wrote nothing of the handshake (see Exchange.onResponseError).
      this.#finish(failed(code, this.#controller === undefined));
    }
  }
}
