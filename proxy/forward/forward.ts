// The terminal stage: streams an allowed request to the upstream over a keep-alive pool and
// streams the answer back. Nothing is buffered whole; back-pressure flows both ways. A
// refused or dropped connection is a 502; a connect or response-header timeout, or no
// connection of the pool free within the connect timeout, a 504; always as a problem body,
// never a hang. A failure after the response has started can only cut the connection, which
// is what the client then sees. A request that may be sent twice (a GET without a body) and
// found its kept-alive connection closed under it is sent once more.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { Socket, isIP } from 'node:net';
import { Pool, buildConnector, type Dispatcher } from 'undici';
import type { ProxyRules } from '../rules/types.ts';
import { upstreamRequestHeaders, clientResponseHeaders, withOwnHeaders } from './headers.ts';
import { CLIENT_CLOSED, CLOSED_UNDER, clientCut, connectionWaitTimeout, errorCode, expireIfWaiting, failed, InterimWait, statusError, transferCodingError, type ForwardOutcome, type Queued } from './outcome.ts';
import { Tunnel, type EarlyBytes } from './tunnel.ts';
import { cutAnswer } from './wire.ts';
import { ClientRead } from './client-read.ts';

/** Whether the request carries a body (chunked, or a non-zero Content-Length). */
export function hasBody(req: IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
}

/** Whether a request asks for a WebSocket (RFC 6455 §4.1: a GET without a body). */
export function isWebSocketHandshake(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  return req.method === 'GET' && typeof upgrade === 'string' && upgrade.toLowerCase() === 'websocket' && !hasBody(req);
}

type Resolve = (outcome: ForwardOutcome) => void;
/** What hears the status the client gets, when its head goes out (the request's Observation). */
export interface Answering { answering?(status: number): void }

/** The exchange of each answer: whether its request went upstream, and withdrawing it before. */
const exchanges = new WeakMap<ServerResponse, Exchange>();

/**
 * Whether the request of `res` has gone to the upstream: its exchange got a connection and
 * undici began writing it. Until then (waiting for a pool connection, connecting) it can still
 * be stopped with nothing acted on (a revocation's sweep, server.ts closeFor).
 */
export function sentUpstream(res: ServerResponse): boolean { return exchanges.get(res)?.sent ?? false; }

/**
 * Whether undici wrote the request's last byte upstream: not whether the client sent it all
 * (req.complete), which a slow upstream may still be far from reading.
 */
export function whollySentUpstream(res: ServerResponse): boolean { return exchanges.get(res)?.whollySent ?? false; }

/**
 * Whether the upstream answers `res` with an event stream (`text/event-stream`, whatever its
 * parameters: HTML's server-sent events, MCP's streamable HTTP): a channel held open, which
 * ends when what it was decided with stops holding (server.ts followStreams).
 */
export function eventStreamAnswer(res: ServerResponse): boolean { return exchanges.get(res)?.eventStream ?? false; }

function isEventStream(type: string | string[] | undefined): boolean {
  return typeof type === 'string' && /^\s*text\/event-stream\s*(;|$)/i.test(type);
}

/**
 * Whether the client says it takes an event stream (`Accept: text/event-stream`, as an
 * EventSource and MCP's clients send): its answer may be quiet between events for as long as
 * a tunnel may, not only proxy.timeouts.response. Read from the request because undici sets a
 * request's body timeout from its options before the answer's head reaches the handler.
 */
function asksForEventStream(req: IncomingMessage): boolean {
  const accept = req.headers.accept;
  return accept !== undefined && /text\/event-stream/i.test(accept);
}

/**
 * Client sockets carrying an event stream their request asked for, idle-timed at tunnelIdle
 * instead of clientIdle while it runs: a reload leaves their timeout alone (server.ts).
 */
export const streamSockets = new WeakSet<Socket>();

/** The tunnel of each WebSocket handshake's client socket, while it is forwarded. */
const tunnels = new WeakMap<Socket, Tunnel>();

/**
 * Withdraw a request before anything was acted on: its forward ends as `refused`, and the
 * caller answers with that problem. A request (`res`): before it is sent upstream (no
 * connection yet), nothing sent. A WebSocket handshake (its client socket): before the
 * upstream's answer began. false when it is under way already, or done.
 */
export function withdraw(target: ServerResponse | Socket, refused: NonNullable<ForwardOutcome['failure']>, detail: string, retryAfter?: number): boolean {
  const more = retryAfter !== undefined ? { retryAfter } : {};
  if (target instanceof Socket) return tunnels.get(target)?.withdraw({ failure: refused, detail, ...more }) ?? false;
  return exchanges.get(target)?.withdraw({ failure: refused, detail, notSent: true, ...more }) ?? false;
}

/**
 * One upstream exchange on undici's dispatch API: the upstream's status and headers become
 * the client's, its body chunks are written straight into the response, and back-pressure is
 * the response's: a full socket pauses the upstream until it drains. undici's request() wraps
 * the same exchange in a Readable body, an AbortController and an abort listener per
 * request: moving off it cut driftguard-core's CPU per request by about a sixth (116 to 98
 * µs at saturation; README, Performance).
 */
class Exchange implements Dispatcher.DispatchHandler, Queued {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #responseHeaders: Record<string, string | string[]>;
  readonly #resolve: Resolve;
  /** Told the status when the client gets the upstream's head (Answering). */
  readonly #answering: Answering | undefined;
  #controller?: Dispatcher.DispatchController;
  #clientGone = false;
  #done = false;
  /** Set while the request waits for a pool connection with a deadline (waitAtMost). */
  #wait?: NodeJS.Timeout;
  #expired = false;
  /**
   * The upstream's status and headers, written with its first body bytes or its end: Node
   * sends a head only with them anyway, and until then a failure (a reset, a bad chunk, a body
   * that never comes) can still be answered as a problem, instead of cutting a connection that
   * has carried nothing and recording a 200 nobody got.
   */
  #head?: { readonly status: number; readonly headers: Record<string, string | string[]> };
  /** The upstream began to answer (a 1xx too): a failure after it is not a stale connection. */
  #answered = false;
  /** Sends the request once more, for a request that may be (sendAgain); used once. */
  #again?: () => void;
  #resent = false;
  /** Withdrawn before it was sent (withdraw): when a connection comes, it is not used. */
  #withdrawn = false;
  /** undici began writing the request upstream (sentUpstream). */
  #sent = false;
  /** undici wrote the request's last byte upstream (whollySentUpstream). */
  #whollySent = false;
  /** The upstream's answer is an event stream (eventStreamAnswer). */
  #eventStream = false;
  /** proxy.timeouts.clientRead (0: no limit). */
  readonly #clientReadMs: number;
  /** The answer's waits for its client, from the first: cut once they add up to clientRead. */
  #reads?: ClientRead;
  /** tunnelIdle, when the request asked for an event stream (asksForEventStream); else undefined. */
  readonly #streamIdleMs: number | undefined;

  /** The final head's wait once an interim answer came (undici's restarts at each). */
  readonly #interim: InterimWait;

  constructor(req: IncomingMessage, res: ServerResponse, responseHeaders: Record<string, string | string[]>, resolve: Resolve, limits: { readonly clientReadMs: number; readonly responseMs: number }, answering?: Answering, streamIdleMs?: number) {
    this.#req = req;
    this.#streamIdleMs = streamIdleMs;
    this.#res = res;
    this.#clientReadMs = limits.clientReadMs;
    this.#interim = new InterimWait(limits.responseMs);
    this.#responseHeaders = responseHeaders;
    this.#resolve = resolve;
    this.#answering = answering;
    res.once('close', this.#onClose);
    // The listener stays: a late error must never become an uncaught 'error' event.
    res.on('error', this.#onClose);
    exchanges.set(res, this);
  }

  withdraw(outcome: ForwardOutcome): boolean {
    if (this.#controller || this.#done) return false;
    this.#withdrawn = true;
    this.#finish(outcome);
    return true;
  }

  #onClose = (): void => {
    if (this.#res.writableFinished || this.#done) return;
    this.#clientGone = true;
    // Before the upstream answered: abort the upstream request (the pool reuses or closes the
    // connection). After: stop reading the body, and report the cut, first: the abort calls
    // onResponseError at once, which would report it as an upstream error.
    if (this.#res.headersSent) this.#finish({ status: this.#res.statusCode, aborted: true, error: clientCut(this.#req.socket, this.#reads?.slow) });
    // Still waiting for a pool connection: nothing was sent, and nothing will be (onRequestStart
    // aborts it), so its idempotency key is free at once, not kept for a write never made.
    else if (!this.#controller) this.#finish({ aborted: true, error: CLIENT_CLOSED, notSent: true });
    this.#controller?.abort(new Error('the client closed the connection'));
  };

  #finish(outcome: ForwardOutcome): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#wait);
    this.#interim.stop();
    this.#reads?.stop();
    this.#res.off('close', this.#onClose);
    // Back to the server's clientIdle: a request pipelined behind the stream gets the socket
    // as it is (Node resets the timeout only for one that follows an idle spell).
    const socket = this.#req.socket;
    if (streamSockets.delete(socket) && !socket.destroyed) socket.setTimeout((socket as Socket & { server?: { timeout?: number } }).server?.timeout ?? 0);
    // Out of the map as soon as it ends: an entry left until the answer is collected keeps the
    // exchange (and through it the request) alive in a weak map's table, which every garbage
    // collection must walk: about 8 µs of CPU a request at saturation (make bench, A/B). Nothing
    // asks after an ended exchange: the forward's caller stops following the answer as it ends.
    exchanges.delete(this.#res);
    this.#resolve(this.#resent ? { ...outcome, resent: true } : outcome);
  }

  get started(): boolean { return this.#controller !== undefined; }

  get sent(): boolean { return this.#sent; }

  get whollySent(): boolean { return this.#whollySent; }

  get eventStream(): boolean { return this.#eventStream; }

  /** `again` sends the request once more, should its connection turn out closed (CLOSED_UNDER). */
  mayRetry(again: () => void): void { this.#again = again; }

  waitAtMost(ms: number): void {
    this.#wait = expireIfWaiting(ms, () => !this.#controller && !this.#done, (err) => { this.#expired = true; this.onResponseError(undefined as never, err); });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    clearTimeout(this.#wait);
    this.#controller = controller;
    if (this.#clientGone) controller.abort(new Error('the client closed the connection'));
    else if (this.#withdrawn) controller.abort(new Error('withdrawn before it was sent'));
    else if (this.#expired) controller.abort(connectionWaitTimeout());
    else this.#sent = true;
  }

  /** undici wrote the request's last byte. */
  onRequestSent(): void { this.#whollySent = true; this.#interim.sent(); }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    this.#answered = true;
    // 1xx: informational, the final answer follows, within proxy.timeouts.response.
    if (statusCode < 200) { this.#interim.interim(controller); return; }
    this.#interim.stop();
    const odd = statusError(statusCode);
    if (odd) { controller.abort(odd); return; }
    // An answer without content (to HEAD, a 204, a 304) may name the codings a GET's would
    // have (RFC 9112 §6.1): nothing can reach the client still coded.
    const coding = this.#req.method === 'HEAD' || statusCode === 204 || statusCode === 304 ? undefined : transferCodingError(headers['transfer-encoding']);
    if (coding) { controller.abort(coding); return; }
    const head = withOwnHeaders(clientResponseHeaders(headers), this.#responseHeaders);
    // The upstream answers before the whole body was sent (a 413 for an upload it will not
    // take): undici stops reading the body and destroys the stream, and Node then stops
    // reading the connection, which would stall until its keep-alive timeout with the client's
    // next request unanswered. The connection closes after this answer instead, and the
    // client is told so (RFC 9112 §9.6).
    if (!this.#req.complete) head.connection = 'close';
    // A 204 has no content and MUST NOT carry a Content-Length (RFC 9110 §8.6): the body is
    // dropped, so the header would describe nothing.
    if (statusCode === 204) delete head['content-length'];
    // Node's writeHead reads a Content-Disposition written after a Content-Length as UTF-8
    // text, not as the bytes it came as: a raw UTF-8 filename (café) arrived as other bytes,
    // and one of CJK characters failed the answer (502). Written before it, it goes as it came.
    if (head['content-disposition'] !== undefined && head['content-length'] !== undefined) {
      const length = head['content-length'];
      delete head['content-length'];
      head['content-length'] = length;
    }
    this.#eventStream = isEventStream(headers['content-type']);
    this.#head = { status: statusCode, headers: head };
    // An event stream's head goes out at once: its first event may be minutes away, and an
    // EventSource takes the stream as open only when it has the 200.
    if (this.#eventStream) {
      this.#writeHead();
      this.#res.flushHeaders();
      // Asked for, it may be quiet for tunnelIdle, on the client's side too: the connection's
      // idle timeout (clientIdle) would close it first.
      if (this.#streamIdleMs !== undefined) { this.#req.socket.setTimeout(this.#streamIdleMs); streamSockets.add(this.#req.socket); }
    }
  }

  #writeHead(): void {
    if (!this.#head) return;
    this.#res.writeHead(this.#head.status, this.#head.headers);
    // Before the body: a client may act on the status (retry a 503) while the rest streams.
    try { this.#answering?.answering?.(this.#head.status); } catch { /* an observer never fails an answer */ }
    this.#head = undefined;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#writeHead();
    if (this.#res.write(chunk)) return;
    const res = this.#res;
    (this.#reads ??= new ClientRead(res, this.#clientReadMs, () => cutAnswer(res))).wait(controller);
  }

  onResponseEnd(): void {
    this.#writeHead();
    const res = this.#res;
    const status = res.statusCode;
    // Done when the last byte is handed to the socket ('finish'); a client gone before that
    // was cut short, which #onClose reports.
    res.end(() => this.#finish({ status }));
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    // Settled already: an abort after a connection-wait timeout, whose 504 is the server's.
    if (this.#done) return;
    const code = errorCode(err);
    // A kept-alive connection the upstream closed as this request went out on it (a race
    // with its idle timeout): nothing came back, and a request that may be sent again is, once,
    // on another connection; any other gets its 502. undici does not say whether the
    // connection was a reused one (nginx and Go's client retry only then), so a new one that
    // fails so is retried too: for these methods, harmless.
    if (this.#again && !this.#answered && !this.#clientGone && !this.#expired && CLOSED_UNDER.has(code)) {
      const again = this.#again;
      this.#again = undefined;
      this.#resent = true;
      this.#controller = undefined;
      again();
      return;
    }
    const res = this.#res;
    if (res.headersSent) {
      cutAnswer(res);
      this.#finish({ status: res.statusCode, aborted: true, error: code });
    } else if (this.#clientGone) {
      // The client left, or driftguard closed its connection idle (an upload that stalled).
      this.#finish({ aborted: true, error: clientCut(this.#req.socket, false) });
    } else {
      // undici calls onRequestStart before it writes the request's first byte: without it,
      // nothing reached the upstream, whatever the error (a certificate it does not trust is
      // no code of NEVER_SENT's), and a write may be sent again. After a resend, the first
      // attempt was sent.
      this.#finish(failed(code, !this.#sent));
    }
  }
}

/** Longest upstream answer head passed on (a longer one is a 502 upstream-unavailable). */
export const UPSTREAM_MAX_HEAD = 15 * 1024;

/**
 * A request that may be sent again when its connection fails before any answer: a safe
 * method (RFC 9110 §9.2.1) with no body. The upstream may have read it before the connection
 * closed: for these, doing it twice changes nothing. Writes (even PUT and DELETE, idempotent
 * in name) are never sent twice by driftguard.
 */
function sendAgain(req: IncomingMessage, body: Buffer | undefined): boolean {
  return (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') && body === undefined && !hasBody(req);
}

/**
 * An https upstream's TLS server name, and the connector that sends it. undici takes the SNI,
 * and the name the upstream's certificate is checked against, from each request's Host, which
 * the caller chooses: an upstream routing by SNI would serve the backend a caller named, and a
 * caller varying its Host made the pool drop its connections ("servername changed"). Pinned
 * to proxy.upstreamHost's host, else proxy.upstream's; an IP address is sent as no SNI (RFC
 * 6066), the certificate then checked against the address connected to.
 */
function upstreamServerName(rules: ProxyRules): { servername: string; connect: buildConnector.connector } | undefined {
  const origin = new URL(rules.upstream);
  if (origin.protocol !== 'https:') return undefined;
  // Without a trailing dot (RFC 6066: `api.internal.` is sent as `api.internal`), which SNI
  // routers that match names exactly would not match.
  const servername = new URL(`https://${rules.upstreamHost ?? origin.host}`).hostname.replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '');
  const base = buildConnector({ timeout: rules.timeouts.connectMs });
  // The same name on every request, so that undici never drops a connection for a change of name.
  const connect: buildConnector.connector = (options, callback) => { base({ ...options, servername: isIP(servername) ? '' : servername }, callback); };
  return { servername, connect };
}

export class Forwarder {
  readonly #pool: Pool;
  readonly #tunnelIdleMs: number;
  /** A refused handshake's answer the client does not read is cut after this long (0: never). */
  readonly #clientIdleMs: number;
  /** Longest wait for a free connection of the pool: the connect timeout's. */
  readonly #connectMs: number;
  readonly #clientReadMs: number;
  readonly #responseMs: number;
  /** proxy.upstreamHost: the Host every forwarded request carries; undefined: the client's. */
  readonly #upstreamHost: string | undefined;
  /** An https upstream's server name, the same for every request (upstreamServerName); undefined for http. */
  readonly #servername: string | undefined;

  constructor(rules: ProxyRules) {
    this.#upstreamHost = rules.upstreamHost;
    this.#tunnelIdleMs = rules.timeouts.tunnelIdleMs;
    this.#clientIdleMs = rules.timeouts.clientIdleMs;
    this.#connectMs = rules.timeouts.connectMs;
    this.#clientReadMs = rules.timeouts.clientReadMs;
    this.#responseMs = rules.timeouts.responseMs;
    const tls = upstreamServerName(rules);
    this.#servername = tls?.servername;
    this.#pool = new Pool(rules.upstream, {
      ...(tls ? { connect: tls.connect } : {}),
      connections: rules.connections,
      connectTimeout: rules.timeouts.connectMs,
      headersTimeout: rules.timeouts.responseMs,
      bodyTimeout: rules.timeouts.responseMs,
      // At most upstreamIdle, less when the upstream's Keep-Alive: timeout=N says so (undici
      // keeps such a connection N − 2 s, within keepAliveMaxTimeout).
      keepAliveTimeout: rules.timeouts.upstreamIdleMs,
      keepAliveMaxTimeout: rules.timeouts.upstreamIdleMs,
      // Room for driftguard's own answer headers (traceresponse, Vary, the deprecation
      // headers, driftguard-warning): a head just under 16 KiB passed on with them was over
      // the 16 KiB a Node or Envoy client reads, and the caller got a parse error, not a 502.
      maxHeaderSize: UPSTREAM_MAX_HEAD,
    });
  }

  /** The request's headers for the upstream, and an https upstream's fixed server name. */
  #upstreamHead(req: IncomingMessage, own: Record<string, string>): { headers: string[]; servername?: string } {
    const headers = upstreamRequestHeaders(req.rawHeaders, req.headers.connection, req.socket.remoteAddress, own, this.#upstreamHost);
    return this.#servername !== undefined ? { headers, servername: this.#servername } : { headers };
  }

  /**
   * Forward `req` as `path` (the canonical target) and stream the answer into `res`.
   * `own` are driftguard's request headers for the upstream; `responseHeaders` are added to
   * the client's response.
   */
  forward(req: IncomingMessage, res: ServerResponse, path: string, own: Record<string, string>, responseHeaders: Record<string, string | string[]>, body?: Buffer, answering?: Answering): Promise<ForwardOutcome> {
    // The caller left while the decision was being made (keys being fetched): its 'close' has
    // already fired, so nothing would abort the request; send nobody's request upstream.
    if (res.destroyed || req.socket.destroyed) return Promise.resolve({ aborted: true, error: CLIENT_CLOSED, notSent: true });
    return new Promise((resolve) => {
      const stream = asksForEventStream(req);
      const exchange = new Exchange(req, res, responseHeaders, resolve, { clientReadMs: this.#clientReadMs, responseMs: this.#responseMs }, answering, stream ? this.#tunnelIdleMs : undefined);
      const options: Dispatcher.DispatchOptions = {
        path,
        method: req.method as 'GET',
        ...this.#upstreamHead(req, own),
        // A check that read the (small) body whole hands its bytes on; otherwise stream it.
        body: body ?? (hasBody(req) ? req : null),
      };
      // No body timeout of undici's: the client connection's idle timeout bounds the pauses,
      // tunnelIdle once the answer is an event stream (Exchange), clientIdle if it is not. One
      // limit, not two timers racing to cut the same stream under two names.
      if (stream) options.bodyTimeout = 0;
      if (sendAgain(req, body)) exchange.mayRetry(() => { this.#dispatch(options, exchange); });
      this.#dispatch(options, exchange);
    });
  }

  /**
   * Forward a WebSocket handshake as `path` and, once the upstream switches protocols, join
   * `client` (the socket of Node's 'upgrade' event) to the upstream's connection. The outcome
   * comes at the 101 (or with the upstream's refusal); the tunnel runs on until either side closes.
   */
  tunnel(req: IncomingMessage, client: Socket, early: EarlyBytes, path: string, own: Record<string, string>, responseHeaders: Record<string, string | string[]>): Promise<ForwardOutcome> {
    if (client.destroyed) return Promise.resolve({ aborted: true, error: CLIENT_CLOSED });
    return new Promise((resolve) => {
      const tunnel = new Tunnel(client, early, responseHeaders, { tunnelIdleMs: this.#tunnelIdleMs, clientIdleMs: this.#clientIdleMs, clientReadMs: this.#clientReadMs, responseMs: this.#responseMs }, (outcome) => { tunnels.delete(client); resolve(outcome); });
      tunnels.set(client, tunnel);
      this.#dispatch({
        path,
        method: 'GET',
        // Upgrade and Connection are hop-by-hop and dropped with the rest; undici writes this
        // hop's pair from `upgrade`. The Sec-WebSocket-* headers are end to end and go on.
        ...this.#upstreamHead(req, own),
        upgrade: req.headers.upgrade as string,
        body: null,
      }, tunnel);
    });
  }

  /**
   * Hand a request to the pool. With every connection busy (slow uploads, clients that stop
   * reading, a slow upstream) undici queues it with no deadline of its own, and the caller
   * would wait for as long as the pool stays full: past the connect timeout it is a 504.
   */
  #dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler & Queued): void {
    try {
      this.#pool.dispatch(options, handler);
    } catch (err) {
      handler.onResponseError?.(undefined as never, err as Error);
      return;
    }
    // A free connection takes the request at once, inside dispatch(): no timer then.
    if (!handler.started && this.#connectMs > 0) handler.waitAtMost(this.#connectMs);
  }

  /** Closed: a reload replaced it, or driftguard is stopping. */
  get closed(): boolean { return this.#pool.closed; }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
