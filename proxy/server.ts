// Wires one driftguard: the traffic listener runs every request through the ordered checks
// and, when the decision lets it through, the terminal forwarding stage; the admin listener
// answers health and operator endpoints. Rules, identity and checks form one Generation that
// a reload replaces atomically: a request uses the generation it started with.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import type { Rules } from './rules/types.ts';
import { parseAddress } from './lib/address.ts';
import { MAX_TIMER_MS } from './rules/durations.ts';
import { BODY_UNPARSABLE, unparsableBodies, gatherSmallChunks, MAX_HEADER_LINES, Discarded, Tally } from './lib/incoming.ts';
import { Pipelining, type Pipeline, type Turn } from './lib/pipelining.ts';
import type { RequestContext, Decision } from './pipeline/types.ts';
import { REASONS, type ReasonCode } from './decision/reasons.ts';
import { checks, type CheckDeps } from './pipeline/checks.ts';
import { endOf, ENDED } from './checks/dates.ts';
import { movingOn } from './checks/deprecation.ts';
import { decider, type Decide } from './pipeline/decide.ts';
import { Identity, keySetKey } from './identity/verify.ts';
import { RulesError, StartError, formatProblem, problemInFile, problemWith } from './rules/load.ts';
import { Forwarder, hasBody, isWebSocketHandshake, eventStreamAnswer, sentUpstream, streamSockets, whollySentUpstream, withdraw } from './forward/forward.ts';
import { UNPARSED_BODY, FLOOD_CUT, REQUEST_TIMEOUT_CUT, CLIENT_CLOSED, idleClosed, CUT_REASON, DRAIN_CUT, EXPIRED_CUT, RELOAD_CUT, REVOKED_CUT, type ForwardOutcome } from './forward/outcome.ts';
import { EarlyBytes } from './forward/tunnel.ts';
import { headerSafe } from './forward/headers.ts';
import { closingResponse, cutAnswer, endAndClose } from './forward/wire.ts';
import { sendProblem, problemAnswer, type Problem } from './decision/problem.ts';
import { contractHeaders, warned } from './decision/headers.ts';
import { noopObserver, type DropCause, type Listener, type Observer, type Observation } from './observe.ts';
import { ADMIN_MAX_CONNECTIONS, AdminRoutes, createAdminServer } from './admin/server.ts';
import type { ReloadStatus } from './reload.ts';
import type { TableFill } from './lib/heap.ts';

/** What the probe listener serves. */
const PROBE_PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics']);
/** A kind of dropped connection is said in a warn line at most this often: one line per connection would let anybody flood the log. */
const DROP_LOG_MS = 60_000;
const DROP_MESSAGE: Readonly<Record<DropCause, string>> = {
  'connection-limit': 'connections refused: the listener holds as many as it may',
  'pipelining-flood': 'connections closed: too many pipelined requests',
};

/** An established WebSocket tunnel (closeFor, a reload's new decision). */
interface OpenTunnel {
  /** The context it was decided with: the handshake's, or a reload's new decision's. */
  ctx: RequestContext;
  /** Take `decided` as its context and end the tunnel at what stops holding under `rules` (endOf). */
  endUnder(decided: RequestContext, rules: Rules): void;
}

export interface Generation {
  readonly rules: Rules;
  readonly identity: Identity;
  readonly decide: Decide;
  /** The same checks but those marked `once`: what is already open is decided again by it after a reload. */
  readonly redecide: Decide;
  readonly forwarder: Forwarder;
}

export interface DriftguardOptions {
  /** Clock in epoch ms; tests freeze it. */
  readonly now?: () => number;
  readonly observer?: Observer;
  /** Long-lived state of feature modules' checks (kept across reloads). */
  readonly deps?: Partial<CheckDeps>;
  readonly log?: (line: Record<string, unknown>) => void;
}

/** A refusal closeFor withdraws or cuts for, with the seconds it lasts where it ends (a quarantine). */
export interface Withdrawal {
  readonly reason: ReasonCode;
  readonly retryAfter?: number;
}

export interface Driftguard {
  readonly traffic: Server;
  readonly admin: Server;
  /** The probe-only listener (/healthz, /readyz, /metrics), when proxy.probes is set. */
  readonly probes?: Server;
  readonly routes: AdminRoutes;
  /** The rules in force. */
  readonly generation: Generation;
  /** Resolves once both listeners listen (keys may still be loading: see ready). */
  readonly listening: Promise<void>;
  readonly ready: boolean;
  /** Why not ready, for /readyz. */
  readonly notReady: string[];
  /** Add a readiness condition: it returns why driftguard is not ready yet, or undefined. */
  addReadinessCheck(check: () => string | undefined): void;
  /** Build a generation from new rules and swap it in; throws (and changes nothing) on failure. */
  swap(rules: Rules): Promise<void>;
  /** Call `listener` each time a reload puts a new generation in force (not when one is rejected). */
  onSwap(listener: (g: Generation) => void): void;
  /** Called with new rules before a swap: a listener that throws rejects the reload (and changes nothing). */
  onPrepare(listener: (rules: Rules) => void | Promise<void>): void;
  /** Reload results, shown by /readyz (set by the reloader). */
  reloadStatus?: ReloadStatus;
  /**
   * The bounded tables, by name, read when metrics are scraped (driftguard_table_*): the
   * verified-token cache here, the others added by the features that keep them.
   */
  readonly tables: Map<string, () => TableFill>;
  /** Requests being handled now, WebSocket tunnels included. */
  readonly inFlight: number;
  /** WebSocket handshakes being decided and the tunnels they became, until they close. */
  readonly tunnels: number;
  /**
   * Close the open WebSocket tunnels, the forwarded answers streaming (head sent), the uploads
   * still arriving and the requests not yet sent upstream whose request context `which` picks,
   * by the reason code it refuses them for (their credential revoked, their consumer
   * quarantined): a tunnel, or an answer that streams for minutes (server-sent events, a long
   * download), is decided once and would otherwise outlive what was decided. Returns how many
   * of each were closed.
   */
  closeFor(which: (ctx: RequestContext) => ReasonCode | Withdrawal | undefined): { tunnels: number; answers: number };
  /**
   * Stop: for delayMs, go on taking requests while saying not ready and closing each
   * connection after its answer (the drain delay: the pod's endpoints reach every client's
   * route only after a while); then stop accepting, let in-flight requests finish within
   * graceMs, and close everything.
   */
  drain(graceMs: number, delayMs?: number): Promise<void>;
  /** Close at once (tests). */
  close(): Promise<void>;
}

/** A reload that would have put rules in force after the drain began: nothing changed. */
export class ShuttingDown extends Error {
  constructor() { super('driftguard is shutting down'); }
}

export function buildGeneration(rules: Rules, previous?: Generation, extra: Partial<CheckDeps> = {}, onTokenCache?: (hit: boolean) => void): Generation {
  const identity = new Identity(rules.identity, { ...(previous ? { keySets: previous.identity.keySets(), previous: previous.identity } : {}), ...(onTokenCache ? { onCache: onTokenCache } : {}) });
  const deps: CheckDeps = { ...extra, identity };
  // The pool (and its keep-alive connections) survives a reload that leaves the proxy settings alone.
  const forwarder = previous && JSON.stringify(previous.rules.proxy) === JSON.stringify(rules.proxy)
    ? previous.forwarder : new Forwarder(rules.proxy);
  const list = checks(rules, deps);
  return { rules, identity, decide: decider(list, rules.proxy.mode), redecide: decider(list.filter((c) => !c.once), rules.proxy.mode), forwarder };
}

/** How long a pool a reload replaced stays open for the requests still using it. */
const RETIRED_POOL_MS = 30_000;
/** The forward stage's refusal of a request whose pool closed after a reload that moved proxy.upstream (forwarderFor): nothing is sent. */
const MOVED: ForwardOutcome = Object.freeze({
  failure: 'upstream-unavailable', notSent: true,
  detail: 'a reload moved proxy.upstream while the request was being decided under the rules before it: it was not sent; send it again, to be decided by the rules in force',
});
/** The refusals a request still waiting for an upstream connection is withdrawn for (closeFor), and what its problem says. */
const WITHDRAWN = { 'credential-revoked': 'the credential was revoked', 'consumer-quarantined': 'the consumer was quarantined' } as const;

/** The clientError code of a body cut for its tiny pieces (lib/incoming.ts): handled as Node's parser errors (HPE_) are. */
const TINY_PIECES = 'HPE_TINY_PIECES';


/** What driftguard's own cut refuses a request for, `by` whom, in a problem's words. */
function refusedFor(by: DriftguardCut, reason: ReasonCode, detail: string | undefined): string {
  if (by === RELOAD_CUT) return `the reloaded rules refuse it${detail ? ` (${detail})` : ''}`;
  const known: Record<string, string> = by === EXPIRED_CUT ? ENDED : WITHDRAWN;
  return known[reason] ?? `it was refused (${reason})`;
}

/** How often an answer that started after a reload is looked at: it is decided again once seen streaming at two looks. */
const LATE_ANSWER_MS = 1_000;
/** How often forwarded event streams are looked at for the end of what they were decided with. */
const STREAM_END_MS = 1_000;
/** Who of driftguard's own cut an answer that had started, for what (closeFor, a reload, followStreams). */
type DriftguardCut = typeof REVOKED_CUT | typeof RELOAD_CUT | typeof EXPIRED_CUT;

/**
 * Close a replaced pool once its requests are done. Its own function: a timer created in
 * swap() would keep swap's whole scope alive, the old generation's rules, identity and checks
 * with it, for the 30 s (reloads every second or two of a 470 KB rules file ran a 96 MiB heap out).
 */
function closeLater(forwarder: Forwarder): void {
  setTimeout(() => { void forwarder.close(); }, RETIRED_POOL_MS).unref();
}

export function startDriftguard(rules: Rules, options: DriftguardOptions = {}): Driftguard {
  const now = options.now ?? Date.now;
  const observer = options.observer ?? noopObserver;
  const log = options.log ?? ((line) => process.stderr.write(JSON.stringify(line) + '\n'));
  // Verified-token cache hits and misses go to the observer (metrics); it must never throw into verify.
  const onTokenCache = observer.tokenCache ? (hit: boolean) => { try { observer.tokenCache!(hit); } catch { /* ignore */ } } : undefined;
  // A key set that stops refreshing (or recovers) is said once, not only counted: tokens
  // signed by a key the issuer rotated in are refused until it recovers.
  const watchKeySets = (g: Generation): Generation => {
    for (const [issuer, keys] of g.identity.issuerKeySets()) {
      const source = keys.status().source;
      keys.report = (failed, error) => log(failed
        ? { level: 'warn', msg: 'signing keys could not be refreshed; the last good keys stay in force', issuer, source, error }
        : { level: 'info', msg: 'signing keys fetched again', issuer, source });
    }
    return g;
  };
  let generation = watchKeySets(buildGeneration(rules, undefined, { ...options.deps, now }, onTokenCache));
  const sockets = new Set<Socket>();
  /** Responses not yet finished (the requests in flight): drain marks those not yet started to close their connection. */
  const responses = new Set<ServerResponse>();
  /** Answers being forwarded, with their request's context, until the forward ends (closeFor). */
  const streaming = new Map<ServerResponse, RequestContext>();
  /** Requests whose body Node's parser refused (an HPE_ error), not a connection that failed: a 400, not a client that left. */
  const badFraming = new WeakSet<IncomingMessage>();
  /** Each request's body pieces until it is refused, then discarded (lib/incoming.ts Tally): its connection is cut past MAX_TINY_PIECES tiny pieces. */
  const tallies = new WeakMap<IncomingMessage, Tally>();
  /** Cut a connection whose refused bodies came in too many tiny pieces: handled as Node's parser errors are. */
  const tooTiny = (socket: Socket): void => { traffic.emit('clientError', Object.assign(new Error('refused request bodies came in too many tiny pieces'), { code: TINY_PIECES }), socket); };
  /** A refused request's body is discarded from now on: what of it came while it was decided counts too. */
  const refusedBody = (req: IncomingMessage): void => {
    const tally = tallies.get(req);
    if (tally) tally.refused = true;
    if (tally && tally.pieces > 0 && tally.discarded.tooTiny(tally.bytes, tally.pieces) && req.socket) tooTiny(req.socket);
  };
  /** Answers driftguard cut (closeFor, a reload's new decision, a body that broke): their record says who, not that the client left. */
  const cutBy = new WeakMap<ServerResponse | Socket, DriftguardCut | typeof UNPARSED_BODY | typeof FLOOD_CUT | typeof REQUEST_TIMEOUT_CUT>();
  /**
   * Answers a reload decided again and kept: the context they were decided with then, whose
   * rules' dates an event stream now ends at (followStreams). Where none, the request's own.
   */
  const redecided = new WeakMap<ServerResponse | Socket, RequestContext>();
  let streamTimer: NodeJS.Timeout | undefined;
  /**
   * Answers not started when a reload decided what was open again: one whose head comes later
   * and that streams on for a second is decided again then, so a stream that starts late does
   * not run on under the old rules, while a short answer to a request the upstream acted on is
   * not cut. Each with the rules it must be decided under, and whether it was seen started.
   */
  const late = new Map<ServerResponse, { readonly g: Generation; started: boolean }>();
  let lateTimer: NodeJS.Timeout | undefined;
  /** Client sockets of WebSocket handshakes and the tunnels they became, until they close. */
  const tunnels = new Set<Socket>();
  /** proxy.timeouts.request in force (start). */
  let requestMs = rules.proxy.timeouts.requestMs;
  /**
   * Each connection's requests in order (onRequest). Its latest: while that request's body has
   * not all arrived, a clientError is that request's.
   */
  const pipelining = new Pipelining(sockets, {
    cut: (socket, limit) => { cutAsFlood(socket); dropped('traffic', 'pipelining-flood', limit); },
  });
  /** Connections whose parser failed after a whole request: they end after its answer (endAfter). */
  const ending = new WeakSet<Socket>();
  /** Requests whose decision is being made (decideAndAnswer). */
  const deciding = new WeakSet<IncomingMessage>();
  /** Connections dropped since the last line said so, and when that was (performance.now), by listener and cause. */
  const drops = new Map<string, { count: number; at: number }>();
  /** The tunnels established (101 passed on), with their handshake's context. */
  const open = new Map<Socket, OpenTunnel>();
  /**
   * Handshakes being forwarded, with their context, until the upstream's answer ends: an
   * upstream that does not switch answers the client itself, and that answer may stream (a
   * server with no WebSocket route serves the GET as it would without the Upgrade). It is
   * cut as a streamed answer is: by a revocation, a quarantine, a reload that refuses it, and
   * at the end of an event stream (followStreams).
   */
  const handshakes = new Map<Socket, RequestContext>();
  /**
   * A stop was asked: /readyz says shutting down and every answer closes its connection, so
   * keep-alive clients reconnect (through the Service, to another pod). During the drain delay
   * new connections are still taken; `draining` refuses them.
   */
  let leaving = false;
  let draining = false;
  /** The drain's grace period is over and it is cutting what still runs: those cuts are its own. */
  let cutting = false;
  let closing: Promise<void> | undefined;
  let idle: (() => void) | undefined;
  /** Ends the drain delay early (close()). */
  let delayEnds: (() => void) | undefined;

  generation.identity.start().catch((err: Error) => {
    // Closed meanwhile (a listener that could not bind stops the start): nothing retries.
    if (closing) return;
    log({ level: 'warn', msg: 'signing keys not loaded yet; retrying in the background', error: err.message });
  });

  const traffic = createServer({
    maxHeaderSize: 16 * 1024, keepAliveTimeout: rules.proxy.timeouts.clientKeepAliveMs,
    // A missing Host is refused by the canonical-path check, as a decision with a problem
    // body, instead of Node's bare 400.
    requireHostHeader: false,
    // A request's head must arrive within 60 s, or proxy.timeouts.request if shorter; its body
    // is timed from when it is handled (start). Node checks heads every connectionsCheckingInterval.
    requestTimeout: 0,
    headersTimeout: headersTimeout(rules.proxy.timeouts.requestMs),
    connectionsCheckingInterval: checkingInterval(rules.proxy.timeouts.requestMs),
    // Only a WebSocket handshake becomes an upgrade; any other Upgrade (h2c, which Java's
    // HttpClient offers on every plain request) is a hop-by-hop header, dropped, and the
    // request is served as HTTP/1.1.
    shouldUpgradeCallback: isWebSocketHandshake,
  }, (req, res) => { onRequest(req, res, false); });
  // Expect: 100-continue. Without this listener Node answers 100 at once, before the
  // decision, and a denied upload is sent whole only to be discarded: the 100 now goes out
  // when the body is first read (ctx.sendContinue).
  traffic.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => { onRequest(req, res, true); });
  // Any other expectation: Node would answer its own plain-text 417 with no decision made or
  // recorded. Expect is hop-by-hop and never forwarded, so the request is decided as it is.
  traffic.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => { onRequest(req, res, false); });

  function onRequest(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    const socket = req.socket;
    const line = pipelining.of(socket);
    const turn: Turn = { req, res, socket, done: false };
    // An Upgrade declined (h2c, a WebSocket Upgrade on a POST): Node's parser drops whatever
    // was read after its head, so a request pipelined behind it would never be answered, and
    // its client would wait for the keep-alive timeout to learn so. Closing after this answer
    // tells it at once to send the rest again on a new connection (RFC 9112 §9.3.2).
    if (req.headers.upgrade !== undefined) res.shouldKeepAlive = false;
    const body = hasBody(req);
    // Its chunks kept as a few buffers, not one Buffer object each (lib/incoming.ts).
    if (body) {
      const tally = new Tally(line ? (line.discarded ??= new Discarded()) : new Discarded());
      tallies.set(req, tally);
      gatherSmallChunks(req, (bytes) => {
        // Counted towards the connection's only once refused (refusedBody): a body forwarded
        // upstream is its allowed caller's.
        if (!tally.refused) { tally.pieces++; tally.bytes += bytes; return false; }
        if (!tally.discarded.tooTiny(bytes)) return false;
        tooTiny(socket);
        return true;
      });
    }
    const run = () => { start(turn, body, expectsContinue, line); };
    if (!line) { run(); return; }
    // HTTP/1.1 pipelining: each request waits for the answer before its own, within the
    // flood bounds (lib/pipelining.ts).
    const arrival = pipelining.arrive(line, turn, body, draining, () => {
      // Destroyed, or ending after an answer that closed it (draining, HTTP/1.0, Connection:
      // close, a malformed request): nobody would get this answer, so it is not decided.
      // Or dropped while it waited (its own bytes could not be parsed: clientError). Or the
      // drain began while it waited behind an answer whose head had said keep-alive: a request
      // not yet decided when the drain begins is not decided (README, Graceful shutdown), and
      // the connection ends once that answer is done.
      if (socket.destroyed || !socket.writable || turn.dropped === true || draining) { responses.delete(res); settled(); finish(turn, line); return; }
      run();
    });
    if (arrival === 'now') run();
    // A drain waits for it as for a request in flight.
    else if (arrival === 'waits') responses.add(res);
  }

  /**
   * Destroy a flood's connection. A request of it already forwarded (the upstream has it, and
   * may have acted on it) is recorded as cut for the flood, not as a client that left.
   */
  function cutAsFlood(socket: Socket): void {
    for (const res of streaming.keys()) if (res.socket === socket) cutBy.set(res, FLOOD_CUT);
    socket.destroy();
  }

  /** A connection closed unanswered: counted, and said in a warn line at most once a minute for each listener and cause. */
  function dropped(listener: Listener, cause: DropCause, limit: number): void {
    try { observer.dropped?.(listener, cause); } catch { /* telemetry never fails an answer */ }
    const key = `${listener} ${cause}`;
    let d = drops.get(key);
    if (!d) drops.set(key, d = { count: 0, at: -Infinity });
    d.count++;
    const at = performance.now();
    if (at - d.at < DROP_LOG_MS) return;
    log({ level: 'warn', msg: DROP_MESSAGE[cause], listener, connections: d.count, limit });
    d.count = 0;
    d.at = at;
  }

  /** Handle one request; once its answer is done, the request after it on its connection may start. */
  function start(turn: Turn, body: boolean, expectsContinue: boolean, line: Pipeline | undefined): void {
    const { req, res } = turn;
    res.once('close', () => { finish(turn, line); });
    // The whole request must arrive within proxy.timeouts.request of its start: without it, a
    // client that trickled its body just under clientIdle held an upstream connection as
    // long as it liked. Timed here, not by Node (from the request's first byte): a pipelined
    // request's body waits, unread, while the answers before it are sent.
    const limit = requestMs;
    if (limit > 0 && body && !req.complete) {
      const socket = req.socket;
      // Until the body has all been read, whoever reads it (the forward, or the drain after a
      // refusal, which a client could otherwise trickle forever): cleared when the request closes.
      const deadline = setTimeout(() => {
        if (req.complete) return;
        // Forwarded: recorded as cut for its time, not as a client that left.
        if (streaming.has(res)) cutBy.set(res, REQUEST_TIMEOUT_CUT);
        socket?.destroy();
      }, limit).unref();
      // Or the connection closes first (a refusal that closed it, the body never sent): the
      // request then never closes, and the timer would hold it and its socket for the limit.
      const gone = () => { clearTimeout(deadline); };
      socket?.once('close', gone);
      req.once('close', () => { clearTimeout(deadline); socket?.off('close', gone); });
    }
    const g = generation;
    const [ctx, observation] = begin(g, req);
    if (expectsContinue) {
      ctx.sendContinue = () => {
        ctx.sendContinue = undefined;
        if (!res.headersSent && !res.writableEnded) res.writeContinue();
      };
    }
    handle(g, ctx, observation, res).catch((err: unknown) => unexpected(err, res, observation.traceId));
  }

  /** A request's answer is done (or it was dropped): the one after it goes on. */
  function finish(turn: Turn, line: Pipeline | undefined): void {
    // Stopping, and the connection's last answer is done: an answer whose head went out before
    // the stop said keep-alive, and the client would go on sending requests on it (a WebSocket
    // handshake too, whose tunnel would hold the drain to its grace). end(): buffered bytes go first.
    if (pipelining.finish(turn, line) && leaving) turn.socket.end();
  }

  function onSocketRequest(req: IncomingMessage, socket: Socket, head: Buffer): void {
    // A handshake (or CONNECT) pipelined behind requests still being answered: Node hands the
    // socket over at once, and its answer would go out before theirs, or theirs into the
    // tunnel. Nothing can be answered in order: the connection is closed.
    const before = pipelining.of(socket)?.last;
    if (before && !before.done) { socket.destroy(); return; }
    // Read after the drain began: a tunnel opened now would hold the drain to its grace.
    if (draining) { socket.destroy(); return; }
    const g = generation;
    const [ctx, observation] = begin(g, req);
    handleUpgrade(g, ctx, observation, socket, head).catch((err: unknown) => unexpected(err, socket, observation.traceId));
  }
  traffic.on('upgrade', onSocketRequest);
  // CONNECT: Node hands the socket over like an upgrade, and without a listener it closed the
  // connection with no answer and no record. The canonical-path check refuses it (in audit
  // mode too), so it is decided, recorded and answered like a refused handshake.
  traffic.on('connect', onSocketRequest);
  // A client connection silent both ways while its request is handled (an upload that
  // stalls, an answer it does not read) holds an upstream connection of the pool: Node closes
  // it after this long, on every request of a keep-alive connection (0: never).
  traffic.timeout = rules.proxy.timeouts.clientIdleMs;
  // Node leaves a connection open when anything else listens for the timeout (a response
  // being streamed may): close it here, whatever else listens.
  traffic.on('timeout', (socket: Socket) => {
    // An answer under way that runs to the close (to HTTP/1.0) is reset, not ended: a FIN made
    // what the client had read look whole (cutAnswer).
    const res = answerOn(socket);
    if (res?.headersSent && !res.writableFinished) cutAnswer(res);
    idleClosed.add(socket);
    socket.destroy();
  });
  // A connection whose head is still arriving holds up to about 20 KiB of heap: thousands of
  // them, from anybody who reaches the port, ran a 96 MiB heap out. Beyond the limit, Node
  // closes a new connection as it is accepted.
  traffic.maxConnections = rules.proxy.clientConnections;
  traffic.maxHeadersCount = MAX_HEADER_LINES;
  traffic.on('drop', () => { dropped('traffic', 'connection-limit', traffic.maxConnections); });
  traffic.on('connection', (s: Socket) => {
    sockets.add(s);
    pipelining.connected(s);
    s.once('close', () => { sockets.delete(s); });
  });
  /**
   * The connection ends after `res`, the answer under way, and what the client sends meanwhile
   * is discarded unparsed: Node's parser has failed, and reported each later chunk as another
   * error (a byte a write added a listener each time, without bound, while the answer streamed).
   * Read and discarded, not paused: a paused socket did not see its client leave, and the
   * upstream call of its stream was held until the upstream spoke.
   */
  function endAfter(socket: Socket, res: ServerResponse): void {
    if (ending.has(socket)) return;
    ending.add(socket);
    // Node took its parser off the socket at the error: the bytes come as 'data', to Node's
    // listener, which would hand them to the failed parser. Only the discarding one is left.
    const discard = (): void => {};
    socket.on('data', discard);
    for (const l of socket.listeners('data')) if (l !== discard) socket.off('data', l as never);
    if (!res.headersSent) res.setHeader('connection', 'close');
    else res.once('finish', () => { socket.destroySoon(); });
  }
  traffic.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // Already ending after its answer under way: what the client sent since is not read, and a
    // head timeout of it (it was never a head) does not cut that answer.
    if (ending.has(socket) && (err.code?.startsWith('HPE_') === true || TIMED_OUT.has(err.code ?? ''))) return;
    // Bytes after a request that said Connection: close (RFC 9112 §9.6): that request is
    // answered, and the connection then ends; nothing after it is read. Cut here, its answer was lost.
    if (err.code === 'HPE_CLOSED_CONNECTION' && answerOn(socket)) return;
    // Node refused to parse the request (header overflow, bad framing) or it did not arrive in
    // time: answer in kind if no answer is or was due on it (a request whose body was still
    // arriving after its answer was sent would otherwise get a second, unasked-for one).
    // A request still being decided whose body Node could not parse (a transfer coding other
    // than chunked, a bad chunk): its decision's answer still goes out, and the connection ends
    // with it (decideAndAnswer); destroyed now, the client got nothing while the record said 400.
    const last = pipelining.of(socket)?.last;
    // Node's parser refused the bytes; otherwise the connection failed (a client's reset: it left).
    const parseError = err.code?.startsWith('HPE_') === true;
    // A whole request, and the bytes after it are no request: the fault is the next one's, of
    // which nothing was parsed. This one is answered as itself, and the connection ends after
    // it. Taken for its own body's fault, a GET was refused for a body it never had, and an
    // answer under way (a write sent upstream) was cut, its client told nothing.
    if (parseError && socket.writable && last && last.req.complete && !last.res.writableFinished) {
      endAfter(socket, last.res);
      return;
    }
    // A request waiting its turn whose bytes Node could not parse (its body's chunks, its
    // Transfer-Encoding): the fault is that request's, of which nothing was handled. It is
    // dropped (its turn does not handle it), and the answer in progress, a whole request's,
    // goes out with Connection: close; destroyed here, that answer was lost, a write the
    // upstream had done included.
    const current = answerOn(socket);
    if (parseError && socket.writable && last?.waiting === true && current && !current.writableFinished) {
      last.dropped = true;
      endAfter(socket, current);
      return;
    }
    if (socket.writable && last && deciding.has(last.req) && !last.res.headersSent) {
      if (parseError) badFraming.add(last.req);
      unparsableBodies.add(last.req);
      last.req.emit(BODY_UNPARSABLE);
      return;
    }
    if (!socket.writable || answerOn(socket) || last?.req.complete === false) {
      // A body that broke while it was forwarded: its record says so, not that the client left.
      if (parseError && last && last.req.complete === false && !deciding.has(last.req)) cutBy.set(last.res, UNPARSED_BODY);
      socket.destroy();
      return;
    }
    // No request object exists yet, so no decision is recorded: the answer is written raw.
    const packet = (err as { rawPacket?: unknown }).rawPacket;
    const method = Buffer.isBuffer(packet) ? packet.subarray(0, 5).toString('latin1') : '';
    const reason = TIMED_OUT.has(err.code ?? '') ? 'request-timeout' : err.code !== 'HPE_HEADER_OVERFLOW' ? 'malformed-request' : targetTooLong(packet) ? 'target-too-long' : 'headers-too-large';
    const a = problemAnswer({ reason, detail: UNPARSED_DETAIL[reason] });
    // An answer to HEAD has no content (RFC 9110 §9.3.2), even this one.
    endAndClose(socket, closingResponse(a.status, a.headers, method === 'HEAD ' ? '' : a.body));
    // Counted, since nothing else records it: a flood of these is visible in the metrics.
    try { observer.unparsed?.(reason); } catch { /* telemetry never fails an answer */ }
  });

  /**
   * Node's request and headers timeouts: a slow client, not a malformed request. A head must
   * arrive within 60 s, or proxy.timeouts.request if shorter (Node's headersTimeout).
   */
  const TIMED_OUT = new Set(['ERR_HTTP_REQUEST_TIMEOUT', 'ERR_HTTP_HEADERS_TIMEOUT']);
  const UNPARSED_DETAIL = {
    'request-timeout': 'the request head did not arrive in time',
    'malformed-request': 'the request could not be parsed',
    'target-too-long': 'the request line takes most of the 16 KiB that request line and headers may have together',
    'headers-too-large': 'the request head is over 16 KiB, or has more than 100 header lines',
  } as const;

  /** The context and observation of one request (or WebSocket handshake). */
  function begin(g: Generation, req: IncomingMessage): [RequestContext, Observation] {
    const ctx: RequestContext = {
      req, rules: g.rules, now: now(), warnings: [], checks: [], extra: {},
    };
    let observation: Observation = noopObserver.begin(ctx);
    try { observation = observer.begin(ctx); } catch { /* telemetry never fails a request */ }
    return [ctx, observation];
  }

  /**
   * The pool a request decided under `g` goes out on: its own, or once that one is closed
   * (RETIRED_POOL_MS after the reload that replaced it: a decision that took longer, a body read
   * slowly, keys fetched) the pool in force, if that reaches the same upstream, instead of
   * failing as a 502 it never was. undefined when
   * the reload moved proxy.upstream: sent there, it would reach an upstream its rules never
   * named, under rules that did not decide it (MOVED).
   */
  function forwarderFor(g: Generation): Forwarder | undefined {
    if (!g.forwarder.closed) return g.forwarder;
    return generation.rules.proxy.upstream === g.rules.proxy.upstream ? generation.forwarder : undefined;
  }

  /** Run the checks; any error denies. `headers` gets what the answer carries whatever it is. */
  async function decide(g: Generation, ctx: RequestContext, observation: Observation, headers: Record<string, string | string[]>): Promise<Decision> {
    let decision: Decision;
    try {
      decision = await g.decide(ctx);
    } catch {
      decision = { decision: 'deny', reason: 'internal-error', detail: 'decision failed', enforced: true, warnings: [] };
    }
    try { observation.decided(decision); } catch { /* ignore */ }
    try {
      contractHeaders(ctx.operation, decision, headers);
      // The answer depends on who calls and on the contract version they declare: a shared
      // cache in front must not serve one caller's answer to another (RFC 9110 §12.5.5).
      // A public operation's answer depends on the declared version alone (no token is read).
      headers['vary'] = ctx.operation?.public ? ctx.rules.contract.declared.header : `authorization, ${ctx.rules.contract.declared.header}`;
      observation.responseHeaders(headers);
    } catch { /* headers are best effort; the decision stands */ }
    return decision;
  }

  function denial(ctx: RequestContext, decision: Decision, observation: Observation): Problem {
    return {
      // Whatever refused it, a caller of a deprecated operation learns where to move and by when.
      ...(ctx.operation ? movingOn(ctx.rules, ctx.operation, ctx.consumer, ctx.now) : {}),
      ...decision,
      ...(ctx.operation ? { operation: ctx.operation.id } : {}),
      ...(observation.traceId ? { traceId: observation.traceId } : {}),
      tokenPresent: ctx.req.headers.authorization !== undefined,
    };
  }

  /** driftguard's own request headers for the upstream: who is calling, under which decision. */
  function upstreamHeaders(ctx: RequestContext, decision: Decision, observation: Observation): Record<string, string> {
    const own: Record<string, string> = {};
    if (ctx.consumer) {
      own['driftguard-consumer'] = headerSafe(ctx.consumer.subject);
      own['driftguard-consumer-kind'] = ctx.consumer.kind;
      // Two trusted issuers' same subject are two consumers: the upstream tells them apart by it.
      if (ctx.credential) own['driftguard-issuer'] = headerSafe(ctx.credential.issuer);
    }
    if (ctx.declaredContract) own['driftguard-contract'] = ctx.declaredContract;
    if (ctx.operation) own['driftguard-operation'] = ctx.operation.id;
    own['driftguard-decision'] = decision.enforced ? decision.decision : 'would-deny';
    try { observation.upstreamHeaders(own); } catch { /* ignore */ }
    return own;
  }

  /**
   * driftguard's answer for a forward that failed: the decision's warnings too, as its warn
   * header names them; `headers` get the traceresponse of a failure (traced, whatever the sampler).
   */
  function forwardingFailed(ctx: RequestContext, decision: Decision, failure: NonNullable<ForwardOutcome['failure']>, outcome: ForwardOutcome, observation: Observation, headers: Record<string, string | string[]>): Problem {
    try { observation.responseHeaders(headers); } catch { /* best effort, as in decide() */ }
    return {
      reason: failure,
      detail: outcome.detail ?? failure,
      ...(outcome.retryAfter !== undefined ? { retryAfter: outcome.retryAfter } : {}),
      warnings: warned(decision),
      ...(ctx.operation ? { operation: ctx.operation.id } : {}),
      ...(observation.traceId ? { traceId: observation.traceId } : {}),
    };
  }

  async function handle(g: Generation, ctx: RequestContext, observation: Observation, res: ServerResponse): Promise<void> {
    const req = ctx.req;
    responses.add(res);
    // While stopping, every answer closes its connection so keep-alive clients reconnect elsewhere.
    if (leaving) res.setHeader('connection', 'close');
    // The request is reported ended once it is handled, whichever comes last: the close or the
    // end of this function. A client that leaves while its decision is being made (keys being
    // fetched, a body being read) still gets that decision recorded, with status 0; reported at
    // the close, it was recorded as a made-up internal-error denial.
    let handled = false;
    let left: number | undefined;
    const end = (status: number) => { try { observation.end(status); } catch { /* ignore */ } };
    // It stays among the responses in flight (which drain waits for) until then too, so that
    // shutdown flushes its record and spans.
    const done = (status: number) => { end(status); responses.delete(res); settled(); };
    res.once('close', () => {
      // The status the client got: writeHead set it, whether driftguard answered or the upstream
      // did; 0 when the client left before any answer (statusCode would still read 200).
      const status = res.headersSent ? res.statusCode : 0;
      if (handled) done(status); else left = status;
    });
    try {
      await decideAndAnswer(g, ctx, observation, res);
    } finally {
      handled = true;
      if (left !== undefined) done(left);
    }
  }

  async function decideAndAnswer(g: Generation, ctx: RequestContext, observation: Observation, res: ServerResponse): Promise<void> {
    const req = ctx.req;
    const headers: Record<string, string | string[]> = {};
    deciding.add(req);
    let decision: Decision;
    try {
      decision = await decide(g, ctx, observation, headers);
    } finally {
      deciding.delete(req);
    }
    // Node could not parse its body (the traffic listener's clientError): never forwarded.
    // Its body Node could not parse while it was decided (lib/incoming.ts): never forwarded.
    const broken = unparsableBodies.has(req);
    if (broken && !(decision.decision === 'deny' && decision.enforced)) {
      // Nothing went upstream: said so, so that the write's idempotency key is free for its
      // retry (it was kept an hour, the retry a duplicate-write of a write never made).
      if (!badFraming.has(req)) {
        // The client's connection failed under it (a reset): it left.
        try { observation.forwarded({ aborted: true, error: CLIENT_CLOSED, notSent: true }); } catch { /* ignore */ }
        req.socket.destroy();
        return;
      }
      // A bad chunk: the forward stage refuses it, 400, and the connection ends (what follows
      // cannot be framed). Before, it was cut unanswered and recorded as a client that left.
      const outcome: ForwardOutcome = { failure: 'malformed-request', detail: 'the request body could not be parsed (its chunked framing is broken): nothing was forwarded', error: UNPARSED_BODY, notSent: true };
      try { observation.forwarded(outcome); } catch { /* ignore */ }
      headers.connection = 'close';
      sendProblem(res, forwardingFailed(ctx, decision, outcome.failure!, outcome, observation, headers), headers);
      return;
    }

    if (decision.decision === 'deny' && decision.enforced) {
      // A client still waiting for its 100 has not sent the body and will not: reading it as
      // the connection's next request would misframe it, so the connection ends here. So does
      // a request driftguard could not read as the upstream would: its framing may be wrong too
      // (Transfer-Encoding in HTTP/1.0, RFC 9112 §6.1), and one whose body Node could not parse.
      if (ctx.sendContinue || decision.reason === 'malformed-request' || broken) headers.connection = 'close';
      else drain(req);
      sendProblem(res, denial(ctx, decision, observation), headers);
      // Its answer written first: a connection cut for tiny pieces then ends after it.
      if (headers.connection !== 'close') refusedBody(req);
      return;
    }

    const own = upstreamHeaders(ctx, decision, observation);
    try { observation.forwarding(); } catch { /* ignore */ }
    ctx.sendContinue?.();
    streaming.set(res, ctx);
    if (!streamTimer) followStreams();
    // Decided under rules a reload has since replaced (its body read by a monitor, its keys
    // fetched, while the swap happened): redecideOpen did not see it, so its answer is followed
    // as one that started after the reload (the tunnel's twin is in handleUpgrade).
    if (generation !== g && !draining) { late.set(res, { g: generation, started: false }); followLate(); }
    let forwarded: ForwardOutcome;
    try {
      forwarded = await (forwarderFor(g)?.forward(req, res, upstreamTarget(ctx), own, headers, ctx.body, observation) ?? MOVED);
    } finally {
      streaming.delete(res);
    }
    const outcome = whoseCut(res, forwarded);
    try { observation.forwarded(outcome); } catch { /* ignore */ }
    if (outcome.failure) {
      // The upstream failed during an upload: the body is cut, so the connection is too (below).
      if (!req.complete) headers.connection = 'close';
      sendProblem(res, forwardingFailed(ctx, decision, outcome.failure, outcome, observation, headers), headers);
    }
  }

  /**
   * A WebSocket handshake (or a CONNECT, always refused): decided like any request; once
   * allowed, the connection becomes a tunnel to the upstream (forward/tunnel.ts). The socket
   * is driftguard's from here on, so answers are written to it directly, and it counts as in
   * flight until it closes.
   */
  async function handleUpgrade(g: Generation, ctx: RequestContext, observation: Observation, socket: Socket, head: Buffer): Promise<void> {
    const req = ctx.req;
    // Node removed its own listeners: without one, a reset connection would crash the process.
    socket.on('error', () => socket.destroy());
    // Read from now on, so that a client leaving (its FIN) is seen while it is decided.
    const early = new EarlyBytes(socket, head);
    tunnels.add(socket);
    let status = 0;
    let ended = false;
    // The handshake's decision is reported once its answer is written (the 101, the upstream's
    // refusal, or a problem); the tunnel's lifetime is not part of it. 0: the client left first.
    const end = (): void => {
      if (ended) return;
      ended = true;
      try { observation.end(status); } catch { /* ignore */ }
    };
    let expiry: NodeJS.Timeout | undefined;
    // A client that leaves before its decision is made: reported once the decision is (as a
    // request's, in handle()).
    let decided = false;
    let left = false;
    // One being forwarded is reported when its forward ends, with the status its client got: at
    // the close it was recorded 0, the status of an answer the client never had.
    socket.once('close', () => { tunnels.delete(socket); open.delete(socket); clearTimeout(expiry); settled(); if (!decided) left = true; else if (!handshakes.has(socket)) end(); });
    const answer = (problem: Problem, headers: Record<string, string | string[]>): void => {
      const a = problemAnswer(problem, headers);
      status = a.status;
      endAndClose(socket, closingResponse(a.status, a.headers, a.body));
      end();
    };
    const headers: Record<string, string | string[]> = {};
    const decision = await decide(g, ctx, observation, headers);
    decided = true;
    if (left) { end(); return; }
    if (decision.decision === 'deny' && decision.enforced) { answer(denial(ctx, decision, observation), headers); return; }
    // Never a tunnel for CONNECT, whatever a defect let through: fail closed.
    if (req.method === 'CONNECT') { answer({ reason: 'internal-error', detail: 'CONNECT is not served', ...(observation.traceId ? { traceId: observation.traceId } : {}) }, headers); return; }

    const own = upstreamHeaders(ctx, decision, observation);
    try { observation.forwarding(); } catch { /* ignore */ }
    handshakes.set(socket, ctx);
    if (!streamTimer) followStreams();
    // Decided under rules a reload has since replaced (its keys fetched while the swap
    // happened): redecideOpen did not see it, so it is decided again now (the request's twin is
    // in decideAndAnswer; a 101 that comes first is decided again as a tunnel, below).
    if (generation !== g && !draining) {
      const now = generation;
      void cutUnder(now, socket, ctx).then((d) => { if (d) closedByReload(0, 1, { [d.reason]: 1 }, now); }, (err: unknown) => couldNotRedecide(err, now));
    }
    let forwarded: ForwardOutcome;
    try {
      forwarded = await (forwarderFor(g)?.tunnel(req, socket, early, upstreamTarget(ctx), own, headers) ?? MOVED);
    } finally {
      handshakes.delete(socket);
    }
    const outcome = whoseCut(socket, forwarded);
    try { observation.forwarded(outcome); } catch { /* ignore */ }
    if (outcome.failure) { answer(forwardingFailed(ctx, decision, outcome.failure, outcome, observation, headers), headers); return; }
    if (outcome.status !== undefined) status = outcome.status;
    end();
    if (status === 101 && !socket.destroyed) {
      // A timer waits at most MAX_TIMER_MS (24.8 days): a later end is waited for in steps.
      const arm = (at: number) => {
        const wait = at - now();
        expiry = setTimeout(() => { if (wait > MAX_TIMER_MS) arm(at); else socket.destroy(); }, Math.min(MAX_TIMER_MS, Math.max(0, wait))).unref();
      };
      const tunnel: OpenTunnel = {
        ctx,
        endUnder(decided, rules) {
          tunnel.ctx = decided;
          clearTimeout(expiry);
          const end = endOf(decided, rules);
          if (end) arm(end.at);
        },
      };
      open.set(socket, tunnel);
      tunnel.endUnder(ctx, g.rules);
      // Decided before a reload whose decision of the open tunnels ran while the upstream had
      // not yet answered: decided again now, under the rules in force.
      if (generation !== g) {
        const now = generation;
        void redecideTunnel(now, socket, tunnel).then((d) => { if (d) closedByReload(1, 0, { [d.reason]: 1 }, now); }, () => {});
      }
    }
  }


  /**
   * Once a second while answers are forwarded: an event stream (text/event-stream, as
   * server-sent events and MCP's streamable HTTP send) is a channel held open as a WebSocket
   * tunnel is, and ends when a tunnel would (endOf): its token expired, its operation's sunset
   * came. The client reconnects with a fresh token and is decided again. Any other answer (a
   * long download) runs to its end: it is one answer, not a channel.
   */
  function followStreams(): void {
    streamTimer = setInterval(() => {
      if (streaming.size === 0 && handshakes.size === 0) { clearInterval(streamTimer); streamTimer = undefined; return; }
      const at = now();
      const ended = (target: ServerResponse | Socket, ctx: RequestContext) => {
        const decided = redecided.get(target) ?? ctx;
        const end = endOf(decided, decided.rules);
        if (end && end.at <= at) cut(target, ctx, EXPIRED_CUT, end.reason);
      };
      for (const [res, ctx] of streaming) if (res.headersSent && eventStreamAnswer(res)) ended(res, ctx);
      // A handshake's answer ends where its tunnel would have.
      for (const [socket, ctx] of handshakes) ended(socket, ctx);
    }, STREAM_END_MS);
    streamTimer.unref();
  }

  /**
   * A reload's rules reach what is already open. Each WebSocket tunnel, and each answer already
   * streaming (its head sent: the upstream has acted on the request), is decided again as if
   * the new rules had been in force when it was decided (its clock, its token), by the checks
   * not marked `once`: the monitors do not count it twice, and a refusal here feeds no
   * quarantine. What they refuse, enforced, is closed, and logged with the reasons; a tunnel
   * they keep ends at the new rules' dates. An upload whose answer has not started finishes
   * under the rules it was decided with: the upstream may be acting on it.
   */
  async function redecideOpen(g: Generation): Promise<void> {
    const reasons: Record<string, number> = {};
    let tunnelsClosed = 0;
    let answersCut = 0;
    const count = (d: Decision) => { reasons[d.reason] = (reasons[d.reason] ?? 0) + 1; };
    try {
      await Promise.all([
        ...[...open].map(async ([socket, tunnel]) => {
          const d = await redecideTunnel(g, socket, tunnel);
          if (d) { count(d); tunnelsClosed++; }
        }),
        ...[...streaming].map(async ([res, was]) => {
          if (!res.headersSent) { late.set(res, { g, started: false }); return; }
          const d = await cutUnder(g, res, was);
          if (d) { count(d); answersCut++; }
        }),
        // A handshake (a GET: nothing acted on) is decided again whether or not its answer has
        // started; one the upstream switches later is decided again as a tunnel then.
        ...[...handshakes].map(async ([socket, was]) => {
          const d = await cutUnder(g, socket, was);
          if (d) { count(d); answersCut++; }
        }),
      ]);
    } catch (err) {
      couldNotRedecide(err, g);
      return;
    }
    if (tunnelsClosed + answersCut > 0) closedByReload(tunnelsClosed, answersCut, reasons, g);
    if (late.size > 0) followLate();
  }

  /** Decide `was` again under `g`; cut its answer when refused. The refusal, when cut. */
  async function cutUnder(g: Generation, target: ServerResponse | Socket, was: RequestContext): Promise<Decision | undefined> {
    const [ctx, d] = await decideAgain(g, was);
    if (!stillIn(g) || !(target instanceof Socket ? handshakes.has(target) : streaming.has(target))) return undefined;
    if (closes(d)) { cut(target, was, RELOAD_CUT, d.reason, d.detail); return d; }
    // Kept: an event stream ends at the new rules' dates. A denial kept open (audit mode's
    // would-deny, driftguard's own 5xx) may have ended the checks before the credential: the
    // context it was decided with before keeps its token's end (as redecideTunnel does).
    if (d.decision !== 'deny') redecided.set(target, ctx);
    return undefined;
  }

  /**
   * An answer driftguard cut (a revocation, a reload, an event stream's end, the drain) closes
   * as one the client left would, or fails a write on the socket it destroyed: its outcome says
   * whose cut it was.
   */
  function whoseCut(target: ServerResponse | Socket, forwarded: ForwardOutcome): ForwardOutcome {
    const cutter = cutBy.get(target) ?? (cutting ? DRAIN_CUT : undefined);
    return cutter !== undefined && forwarded.aborted === true ? { ...forwarded, error: cutter } : forwarded;
  }

  /**
   * Cut everything still running (the end of a drain's grace period, close()): an answer that
   * runs to the close (to HTTP/1.0, a handshake's) is reset, so that it cannot look whole
   * (cutAnswer); every connection is destroyed.
   */
  function cutAll(): void {
    for (const r of responses) if (r.headersSent && !r.writableFinished) cutAnswer(r);
    for (const s of handshakes.keys()) cutAnswer(s);
    for (const s of sockets) s.destroy();
  }

  /**
   * Cut an answer in flight, `by` driftguard for `reason`: its record says who and why, not that
   * the client left. A handshake the upstream has not answered yet is withdrawn instead: the
   * client gets the refusal's problem (a new handshake's), not a reset that says nothing, and
   * its record that reason as the forward stage's. `detail`: the refusal's, when there is one.
   */
  function cut(target: ServerResponse | Socket, ctx: RequestContext, by: DriftguardCut, reason: ReasonCode, detail?: string): void {
    // Enforced only: under proxy.mode audit a new handshake would be let through, and a problem
    // would claim a refusal audit mode never makes (its token's end still cuts it, as a tunnel).
    if (target instanceof Socket && generation.rules.proxy.mode === 'enforce' && withdraw(target, reason, `${refusedFor(by, reason, detail)} while the upstream had not answered the handshake: it was not switched`)) return;
    cutBy.set(target, by);
    ctx.extra[CUT_REASON] = reason;
    cutAnswer(target);
  }

  /**
   * Once a second, a late answer seen started at the tick before and still streaming is decided
   * again: it has streamed a second or more (an answer that had just started is not cut at the
   * end of its body); the rest are waited for.
   */
  function followLate(): void {
    if (lateTimer) return;
    lateTimer = setInterval(() => {
      const started: [ServerResponse, Generation][] = [];
      for (const [res, entry] of late) {
        if (!streaming.has(res) || !stillIn(entry.g)) late.delete(res);
        else if (entry.started) { late.delete(res); started.push([res, entry.g]); }
        else entry.started = res.headersSent;
      }
      if (late.size === 0) { clearInterval(lateTimer); lateTimer = undefined; }
      if (started.length === 0) return;
      void Promise.all(started.map(([res, g]) => cutUnder(g, res, streaming.get(res)!))).then((cut) => {
        const reasons: Record<string, number> = {};
        for (const d of cut) if (d) reasons[d.reason] = (reasons[d.reason] ?? 0) + 1;
        const n = cut.filter(Boolean).length;
        if (n > 0) closedByReload(0, n, reasons, generation);
      }, (err: unknown) => couldNotRedecide(err, generation));
    }, LATE_ANSWER_MS);
    lateTimer.unref();
  }

  /** The decider never throws (a check's failure is an internal-error denial): a defect here leaves what is open as it was, and says so. */
  function couldNotRedecide(err: unknown, g: Generation): void {
    log({ level: 'error', msg: 'open tunnels and streaming answers could not be decided again after the reload', error: (err as Error | undefined)?.name ?? typeof err, rules: g.rules.hash });
  }

  function closedByReload(tunnelsClosed: number, answersCut: number, reasons: Record<string, number>, g: Generation): void {
    log({ level: 'info', msg: 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them', tunnels: tunnelsClosed, answers: answersCut, reasons, rules: g.rules.hash });
  }

  /** The context and decision of a request decided again under `g`'s rules, at its own time. */
  async function decideAgain(g: Generation, was: RequestContext): Promise<[RequestContext, Decision]> {
    const ctx: RequestContext = { req: was.req, rules: g.rules, now: was.now, warnings: [], checks: [], extra: {} };
    return [ctx, await g.redecide(ctx)];
  }

  /** `g` is still the rules in force and driftguard is not draining: a later reload decides again itself. */
  function stillIn(g: Generation): boolean {
    return generation === g && !draining;
  }

  /**
   * Whether a new decision closes what is open: an enforced denial of the request itself. Not
   * one of driftguard's own unavailability (a 5xx: a revocation list the reload added and has
   * not read yet, keys being fetched, a check's failure), which tells a new request to retry:
   * a reload that added a list URL closed every tunnel, though nothing was revoked.
   */
  function closes(d: Decision): boolean {
    return d.decision === 'deny' && d.enforced && REASONS[d.reason].status < 500;
  }

  /** Decide one open tunnel again under `g`; the refusal it was closed for, if it was. */
  async function redecideTunnel(g: Generation, socket: Socket, tunnel: OpenTunnel): Promise<Decision | undefined> {
    const [ctx, d] = await decideAgain(g, tunnel.ctx);
    if (!stillIn(g) || !open.has(socket)) return undefined;
    if (closes(d)) { socket.destroy(); return d; }
    // Any denial kept open (audit mode's would-deny, driftguard's own 5xx) may have ended the
    // checks before the credential: the context it was decided with keeps its token's end.
    tunnel.endUnder(d.decision === 'deny' ? tunnel.ctx : ctx, g.rules);
    return undefined;
  }

  /**
   * The last line of defence: a defect on the request path answers 500 `internal-error` (or
   * cuts the connection once an answer has started) and is logged, never crashes the process.
   * Only the error's name and code are logged: a message may quote a header value.
   */
  function unexpected(err: unknown, to: ServerResponse | Socket, traceId: string | undefined): void {
    const e = err as { name?: string; code?: string } | undefined;
    log({ level: 'error', msg: 'request failed unexpectedly', error: e?.name ?? typeof err, ...(e?.code ? { code: e.code } : {}), ...(traceId ? { traceId } : {}) });
    try {
      if ('headersSent' in to && !to.headersSent) { sendProblem(to, { reason: 'internal-error', detail: 'the request could not be handled', ...(traceId ? { traceId } : {}) }); return; }
    } catch { /* fall through: cut the connection */ }
    to.destroy();
  }

  /** Called as each request or tunnel finishes: wakes a drain waiting for the last one. */
  function settled(): void {
    if (responses.size + tunnels.size === 0) idle?.();
  }

  const routes = new AdminRoutes();
  const readinessChecks: (() => string | undefined)[] = [];
  const swapListeners: ((g: Generation) => void)[] = [];
  const prepareListeners: ((rules: Rules) => void | Promise<void>)[] = [];
  const notReady = (): string[] => {
    const why: string[] = [];
    if (leaving) why.push('shutting down');
    // One reason per key set not in yet, named as the logs and metrics name it (the issuer, and
    // the set by origin and path: a query or userinfo may carry a credential), with its last
    // error: with several issuers, "signing keys not fetched yet" said neither which nor why.
    for (const [issuer, keys] of generation.identity.issuerKeySets()) {
      if (keys.ready) continue;
      const { source, lastError } = keys.status();
      why.push(`signing keys of ${issuer} not fetched yet from ${source}${lastError !== undefined ? `: ${lastError}` : ''}`);
    }
    for (const check of readinessChecks) {
      let reason: string | undefined;
      try { reason = check(); } catch (err) { reason = `readiness check failed: ${(err as Error).message}`; }
      if (reason) why.push(reason);
    }
    return why;
  };
  routes.add('GET', '/healthz', (_req, res) => routes.json(res, 200, { status: 'alive' }));
  routes.add('GET', '/readyz', (_req, res) => {
    const why = notReady();
    routes.json(res, why.length ? 503 : 200, {
      status: why.length ? 'not ready' : 'ready', rules: generation.rules.hash, reasons: why,
      ...(self.reloadStatus ? { reload: self.reloadStatus } : {}),
    });
  });
  const admin = createAdminServer(routes, log);
  // Read-only, non-sensitive endpoints for the kubelet and Prometheus: the decision ring,
  // the owner view and the revocation list stay on the admin listener.
  const probes = rules.proxy.probes !== undefined ? createAdminServer(routes, log, PROBE_PATHS) : undefined;
  admin.on('drop', () => { dropped('admin', 'connection-limit', ADMIN_MAX_CONNECTIONS); });
  probes?.on('drop', () => { dropped('probes', 'connection-limit', ADMIN_MAX_CONNECTIONS); });

  // A port that cannot be had (in use, not allowed) stops start-up at its field, as any problem of the rules.
  // The rules as the generation has them: a closure naming `rules` would keep the rules read at
  // start alive as long as the process, whatever reloads replaced them.
  const listen = (server: Server, field: 'listen' | 'admin' | 'probes') => new Promise<void>((resolve, reject) => {
    const initial = generation.rules;
    const address = initial.proxy[field]!;
    const a = parseAddress(address)!;
    const failed = (err: NodeJS.ErrnoException) => reject(new StartError(formatProblem(problemWith(initial, ['proxy', field], `cannot listen on ${address}: ${err.code ?? err.message}`))));
    server.once('error', failed);
    server.listen(a.port, a.host, () => { server.off('error', failed); resolve(); });
  });
  const listening = Promise.all([
    listen(traffic, 'listen'), listen(admin, 'admin'),
    ...(probes ? [listen(probes, 'probes')] : []),
  ]).then(() => {});

  const self: Driftguard = {
    traffic, admin, routes, listening, ...(probes ? { probes } : {}),
    tables: new Map([['token_cache', () => generation.identity.cacheFill()]]),
    get inFlight() { return responses.size + tunnels.size; },
    get tunnels() { return tunnels.size; },
    closeFor(which) {
      // Fail closed: a check that fails closes.
      const picks = (ctx: RequestContext): Withdrawal | undefined => {
        try {
          const picked = which(ctx);
          return typeof picked === 'string' ? { reason: picked } : picked;
        } catch { return { reason: 'internal-error' }; }
      };
      let tunnels = 0;
      let answers = 0;
      for (const [socket, t] of open) if (picks(t.ctx)) { socket.destroy(); tunnels++; }
      // An answer not started to a request wholly sent upstream is left to finish: the upstream
      // is acting on what was decided before, and cutting it would only hide the outcome (a
      // client then retries a write it does not know happened). Once its head is sent it
      // streams, and the next sweep cuts it. An upload not yet wholly written upstream is cut
      // now (the client may have sent it all into a slow upstream's buffers: the upstream has
      // not read it), and a request still waiting for an upstream connection is withdrawn:
      // nothing was acted on, nothing will be.
      for (const [res, ctx] of streaming) {
        const unsent = !sentUpstream(res);
        const picked = res.headersSent || !whollySentUpstream(res) || unsent ? picks(ctx) : undefined;
        if (!picked) continue;
        const { reason, retryAfter } = picked;
        answers++;
        // Not sent yet, and no answer begun: withdrawn, and the client is told why, as its
        // next request would be (a reset hid whether a write was made).
        const why = WITHDRAWN[reason as keyof typeof WITHDRAWN] as string | undefined;
        if (why !== undefined && unsent && !res.headersSent && withdraw(res, reason as keyof typeof WITHDRAWN, `${why} while the request waited for an upstream connection: it was not sent`, retryAfter)) continue;
        cut(res, ctx, REVOKED_CUT, reason);
      }
      for (const [socket, ctx] of handshakes) {
        const picked = picks(ctx);
        if (picked) { cut(socket, ctx, REVOKED_CUT, picked.reason); answers++; }
      }
      return { tunnels, answers };
    },
    get generation() { return generation; },
    get ready() { return notReady().length === 0; },
    get notReady() { return notReady(); },
    addReadinessCheck(check) { readinessChecks.push(check); },
    onSwap(listener) { swapListeners.push(listener); },
    onPrepare(listener) { prepareListeners.push(listener); },
    async swap(next: Rules) {
      for (const prepare of prepareListeners) await prepare(next);
      const old = generation;
      const g = watchKeySets(buildGeneration(next, old, { ...options.deps, now }, onTokenCache));
      const shared = new Set(old.identity.keySets().values());
      // Only new key sets must load before the swap: a shared one already serves the old
      // generation, and a failed refetch of it (keys kept) must not block an unrelated change.
      const keySets = g.identity.keySets();
      const fresh = next.identity.issuers.flatMap((iss, i) => {
        const k = keySets.get(keySetKey(iss));
        return k && !shared.has(k) ? [{ i, k }] : [];
      });
      // A generation that will not serve: what it opened of its own is closed.
      const discard = () => {
        for (const k of keySets.values()) if (!shared.has(k)) k.close();
        if (g.forwarder !== old.forwarder) void g.forwarder.close();
      };
      const started = await Promise.allSettled(fresh.map(({ k }) => k.start()));
      const failed = started.findIndex((s) => s.status === 'rejected');
      if (failed !== -1) {
        discard();
        // At the issuer's jwks field, as every rules problem is named (FILE:LINE:COLUMN: field).
        const { i } = fresh[failed]!;
        const reason = (started[failed] as PromiseRejectedResult).reason as Error;
        throw new RulesError([problemInFile(next.source, ['identity', 'issuers', i, 'jwks'], reason.message)], { transient: true });
      }
      // A stop began while the key sets loaded (its drain delay included): the drain closes the
      // generation in force, and would never close this one.
      if (leaving) { discard(); throw new ShuttingDown(); }
      const kept = new Set(keySets.values());
      for (const k of shared) if (!kept.has(k)) k.retire();
      generation = g;
      traffic.timeout = next.proxy.timeouts.clientIdleMs;
      traffic.keepAliveTimeout = next.proxy.timeouts.clientKeepAliveMs;
      // Node gives a connection the server's timeout as it is accepted, and again as a request
      // follows an idle spell (it reads server.timeout then, updated above). A connection with
      // a request under way, or none yet, kept the old value. One idle between requests runs
      // Node's keep-alive close on the same timer, and is left to it (given clientIdle, it stayed
      // open that long, or for ever with 0s, after every reload). Not a handshake's or a tunnel's.
      for (const s of sockets) {
        const line = pipelining.of(s);
        if (tunnels.has(s) || handshakes.has(s) || streamSockets.has(s) || (line && line.last !== undefined && line.open === 0)) continue;
        s.setTimeout(next.proxy.timeouts.clientIdleMs);
      }
      traffic.maxConnections = next.proxy.clientConnections;
      // The checking interval was set at start: a reload to a much shorter limit is checked less often.
      requestMs = next.proxy.timeouts.requestMs;
      traffic.headersTimeout = headersTimeout(requestMs);
      for (const listener of swapListeners) listener(g);
      if (old.forwarder !== g.forwarder) closeLater(old.forwarder);
      void redecideOpen(g);
    },
    async drain(graceMs: number, delayMs = 0) {
      leaving = true;
      // Answers in flight that have not started yet close their connection once sent.
      for (const r of responses) if (!r.headersSent) r.setHeader('connection', 'close');
      if (delayMs > 0 && !closing) {
        // As a regular container, the sidecar gets SIGTERM as the pod starts terminating, while
        // kube-proxy, ingresses and meshes still route new connections to it for a moment:
        // refusing them then fails calls that another pod would have taken. A connection idle
        // between requests is closed now (its client reconnects, elsewhere), and again below.
        traffic.closeIdleConnections();
        log({ level: 'info', msg: 'drain delay: still accepting; each answer closes its connection', inFlight: self.inFlight, delayMs });
        await new Promise<void>((resolve) => { delayEnds = resolve; setTimeout(resolve, delayMs).unref(); });
        delayEnds = undefined;
      }
      draining = true;
      // Stop accepting (new connections are refused) and close connections idle between requests.
      const closed = new Promise<void>((resolve) => traffic.close(() => resolve()));
      traffic.closeIdleConnections();
      log({ level: 'info', msg: 'draining: new connections are refused', inFlight: self.inFlight, graceMs });
      // WebSocket tunnels count too: they get the grace period to finish, then are cut.
      if (self.inFlight > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, graceMs);
          idle = () => { clearTimeout(timer); resolve(); };
        });
      }
      if (self.inFlight > 0) {
        // Past the grace period: cut what is still running (the client sees a reset connection).
        log({ level: 'warn', msg: 'grace period over; cutting requests still in flight', inFlight: self.inFlight, graceMs });
        cutting = true;
        cutAll();
      } else {
        // Every answer is complete; end (not destroy) so that bytes still buffered are flushed.
        for (const s of sockets) { s.end(); setTimeout(() => s.destroy(), 1_000).unref(); }
      }
      await closed;
      await self.close();
    },
    close() {
      // Once: drain ends with a close, and a caller may close again.
      closing ??= (async () => {
        leaving = true;
        draining = true;
        delayEnds?.();
        const stopped = [traffic, admin, probes].filter((s) => s?.listening).map((s) => new Promise<void>((resolve) => { s!.close(() => resolve()); s!.closeAllConnections(); }));
        // A server's close waits for every connection, and a WebSocket tunnel is one that
        // closeAllConnections does not know (Node handed its socket over): cut them all.
        cutAll();
        await Promise.all(stopped);
        generation.identity.close();
        await generation.forwarder.close();
      })();
      return closing;
    },
  };
  return self;
}

/**
 * The request-target the upstream gets: the canonical one. The canonical-path check sets it
 * and is enforced in audit mode too, so a request without one never gets here; if a defect
 * let one through, this throws and the request is answered 500 (server's unexpected()),
 * rather than forwarded to a path of "undefined".
 */
/** The answer Node is writing on a client connection (its `_httpMessage`): the first of its requests not yet answered whole. */
function answerOn(socket: Socket): ServerResponse | undefined {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined;
}

function upstreamTarget(ctx: RequestContext): string {
  const t = ctx.target;
  if (!t) throw new Error('no canonical request-target');
  return t.path + t.query;
}

/**
 * Node's parser overflowed its 16 KiB (request line and headers together) mostly on the
 * request line: the chunk it failed on starts a request (a method and a space) and its first
 * line, or all of it, is longer than half of that. A request line sent in several pieces is
 * reported as headers-too-large, the answer it got before.
 */
function targetTooLong(packet: unknown): boolean {
  if (!Buffer.isBuffer(packet) || !/^[A-Z]{1,16} /.test(packet.subarray(0, 17).toString('latin1'))) return false;
  const eol = packet.indexOf('\n');
  return eol === -1 ? packet.length > 8 * 1024 : eol > 8 * 1024;
}

/** Read and discard what is left of a denied request's body, so keep-alive survives. */
function drain(req: IncomingMessage): void {
  if (!req.complete) req.resume();
}

/** Node's headersTimeout: 60 s (its default), or proxy.timeouts.request if shorter. */
function headersTimeout(requestMs: number): number {
  return requestMs === 0 ? 60_000 : Math.min(60_000, requestMs);
}

/** How often Node checks headersTimeout: a quarter of proxy.timeouts.request, between 250 ms and 30 s (Node's default). */
function checkingInterval(requestMs: number): number {
  return requestMs === 0 ? 30_000 : Math.min(30_000, Math.max(250, Math.floor(requestMs / 4)));
}
