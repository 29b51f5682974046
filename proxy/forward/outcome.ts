// How a forwarding ended, as both terminal stages (a request, a WebSocket handshake) report
// it to the server and to telemetry.

import type { ReasonCode } from '../decision/reasons.ts';

export interface ForwardOutcome {
  /** Status the client got from the upstream, or undefined when forwarding failed. */
  readonly status?: number;
  /**
   * Why forwarding failed before a response started (the caller answers with a problem): the
   * upstream, or a request body Node could not parse after the decision (malformed-request);
   * or the refusal a request was withdrawn for before anything was acted on (withdraw in
   * forward.ts: a revocation's sweep while it waited for a connection, `credential-revoked`;
   * for a handshake the upstream had not answered, any refusal: reloaded rules', its token's end).
   */
  readonly failure?: ReasonCode;
  /** With a failure: what the caller's problem and the decision record say of it (failureDetail). */
  readonly detail?: string;
  /** With a withdrawal for a quarantine: the seconds it lasts, the answer's Retry-After. */
  readonly retryAfter?: number;
  /** The response had started and was cut. */
  readonly aborted?: boolean;
  readonly error?: string;
  /** Sent a second time: its kept-alive connection was closed under the first (CLOSED_UNDER). */
  readonly resent?: boolean;
  /** Nothing was sent upstream: the caller had left before forwarding began. */
  readonly notSent?: boolean;
  /**
   * The upstream call failed before undici wrote a byte of the request (no onRequestStart: a
   * TLS handshake the upstream's certificate failed, a connection never made), whatever the
   * error's code: the call is recorded, and a write's idempotency key is free (neverSent).
   */
  readonly unwritten?: boolean;
}

/** A ForwardOutcome's `error` when the client left first (an error code otherwise). */
export const CLIENT_CLOSED = 'client closed';
/** Its `error` when driftguard cut an answer whose client kept the upstream waiting longer than proxy.timeouts.clientRead. */
export const CLIENT_TOO_SLOW = 'client too slow';
/**
 * Its `error` when driftguard closed a client connection that carried no byte either way for
 * proxy.timeouts.clientIdle (tunnelIdle for an event stream the request asked for) while its
 * answer streamed: driftguard's close, not the client leaving.
 */
export const CLIENT_IDLE = 'client idle';
/** Client sockets the traffic server closed for their idle time (server.ts), so that the close is told from the client's. */
export const idleClosed = new WeakSet<object>();

/**
 * The `error` of an answer whose client connection closed under it: driftguard's cut when its
 * waits for the client added up to clientRead (`slow`) or the connection sat idle past its
 * limit, else the client leaving.
 */
export function clientCut(client: object, slow: boolean | undefined): string {
  return slow ? CLIENT_TOO_SLOW : idleClosed.has(client) ? CLIENT_IDLE : CLIENT_CLOSED;
}
/** Its `error` when driftguard's drain cut the connection at the end of its grace period. */
export const DRAIN_CUT = 'drain';
/** Its `error` when driftguard cut an answer because its credential was revoked or its consumer quarantined meanwhile. */
export const REVOKED_CUT = 'revoked';
/** Its `error` when a request body Node could not parse (a bad chunk) was not forwarded: driftguard's, not the client leaving. */
export const UNPARSED_BODY = 'body unparsable';
/** Its `error` when driftguard cut an answer because rules reloaded while it streamed refuse its request. */
export const RELOAD_CUT = 'reload';
/** Its `error` when driftguard ended an event stream because what it was decided with stopped holding: its token expired, its operation's sunset came. */
export const EXPIRED_CUT = 'expired';
/** The `error`s of the cuts driftguard makes itself, whether or not the answer had started. */
export const DRIFTGUARD_CUTS: ReadonlySet<string> = new Set([DRAIN_CUT, REVOKED_CUT, RELOAD_CUT, EXPIRED_CUT]);
/** Its `error` when driftguard cut the connection of a request in flight as a pipelining flood (server.ts floodCut). */
export const FLOOD_CUT = 'pipelining flood';
/** Its `error` when driftguard cut the connection of a forwarded request whose body had not all come within proxy.timeouts.request. */
export const REQUEST_TIMEOUT_CUT = 'request timeout';
/**
 * The connections driftguard closed for the client's doing (its body broke, it sat idle, it read
 * too slowly, it pipelined a flood, its body did not come in time): counted as the client's.
 */
export const CLIENT_CUTS: ReadonlySet<string> = new Set([UNPARSED_BODY, CLIENT_IDLE, CLIENT_TOO_SLOW, FLOOD_CUT, REQUEST_TIMEOUT_CUT]);
/**
 * The cuts the record names whether or not the answer had started: driftguard's own, and the
 * client's doing. Without a `cut`, a request cut before its answer started is recorded as a
 * client that left (status 0), sampled as any allow, and counted nowhere.
 */
export const RECORDED_CUTS: ReadonlySet<string> = new Set([...DRIFTGUARD_CUTS, ...CLIENT_CUTS]);
/** The ctx.extra key (span `driftguard.cut.reason`) naming the reason code of a revoked, reload or expired cut. */
export const CUT_REASON = 'cut.reason';

/** A request that waited longer than the connect timeout for a free connection of the pool. */
export const CONNECTION_WAIT_TIMEOUT = 'DRIFTGUARD_CONNECTION_WAIT_TIMEOUT';

const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT', CONNECTION_WAIT_TIMEOUT]);

/**
 * A terminal stage's handler as the forwarder sees it while the request waits in undici's
 * queue for a connection: it has started once undici gave it one; waitAtMost() makes it fail
 * (504, CONNECTION_WAIT_TIMEOUT) if that takes longer than `ms`, and abort the request if a
 * connection comes after all.
 */
export interface Queued {
  readonly started: boolean;
  waitAtMost(ms: number): void;
}

export function connectionWaitTimeout(): Error {
  return Object.assign(new Error('no upstream connection was free in time'), { code: CONNECTION_WAIT_TIMEOUT });
}

/** After `ms`, `expire` with a connection-wait timeout, if the handler is still `waiting()`. */
export function expireIfWaiting(ms: number, waiting: () => boolean, expire: (err: Error) => void): NodeJS.Timeout {
  return setTimeout(() => { if (waiting()) expire(connectionWaitTimeout()); }, ms);
}

/** An upstream answer undici's parser refused (a control byte in a header, bare CR, obs-fold). */
export const UPSTREAM_UNPARSABLE = 'UPSTREAM_UNPARSABLE';

/**
 * An upstream answer that cannot be read as one: an interim 100 Continue nobody asked for, or a
 * 101 to a request that asked for no upgrade (undici will not read past either), or a status
 * outside 100-599, which has no class for a client to fall back on (RFC 9110 §15).
 */
export const UPSTREAM_UNREADABLE = 'UPSTREAM_UNREADABLE';

/** The error to abort with when a final answer's status is above 599 (Node's parser takes up to 999). */
export function statusError(status: number): Error | undefined {
  return status > 599 ? Object.assign(new Error(`the upstream answered with status ${status}, outside 100-599`), { code: UPSTREAM_UNREADABLE }) : undefined;
}

export function errorCode(err: unknown): string {
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  // undici destroys the connection with this SocketError when the upstream sends an answer it
  // will not read (an interim 100 Continue it did not ask for, an answer to no request): the
  // upstream answered, it closed nothing, and a request sent again would be acted on twice.
  if (e.code === 'UND_ERR_SOCKET' && (e.message === 'bad response' || e.message === 'bad upgrade')) return UPSTREAM_UNREADABLE;
  // undici's parser asserts on what it cannot take of an answer rather than failing it: a status
  // below 100 (000, 099), a 101 without Upgrade to a handshake. An assertion of undici's, on
  // the upstream's bytes: the upstream's answer cannot be read (not "the upstream failed").
  if (e.code === 'ERR_ASSERTION') return UPSTREAM_UNREADABLE;
  // undici's HTTPParserError often has no code: named, so a responder is not left with UNKNOWN.
  return e.code ?? e.cause?.code ?? (e.name === 'HTTPParserError' ? UPSTREAM_UNPARSABLE : 'UNKNOWN');
}

/**
 * What the caller's problem and the decision record say of a failed forwarding, with the
 * error's code: a responder tells a refused connection (ECONNREFUSED) from a reset or an answer
 * driftguard would not pass on. The code is the upstream's or undici's, never a header value.
 */
function failureDetail(outcome: ForwardOutcome): string {
  const what = outcome.error === UPSTREAM_TRANSFER_CODING ? 'the upstream answered with a transfer coding other than chunked'
    : outcome.error === UPSTREAM_UPGRADE_MISMATCH ? 'the upstream switched to another protocol than the WebSocket asked for'
    : outcome.error === UPSTREAM_UNPARSABLE || outcome.error?.startsWith('HPE_') ? 'the upstream\'s answer could not be parsed'
    : outcome.error === UPSTREAM_UNREADABLE ? 'the upstream sent an answer that cannot be read (an interim 100 Continue it was not asked for, a protocol switch, or a status outside 100-599)'
    : outcome.error === CONNECTION_WAIT_TIMEOUT ? 'no upstream connection was free in time: every one of proxy.connections was busy'
    : outcome.failure === 'upstream-timeout' ? 'the upstream did not answer in time'
    : outcome.error === undefined || outcome.unwritten || NEVER_SENT.has(outcome.error) ? 'the upstream could not be reached'
    : CUT.has(outcome.error) ? 'the upstream closed the connection before its answer was complete'
    : REFUSED_ANSWER.has(outcome.error) ? 'the upstream\'s answer could not be passed on'
    : 'the upstream failed';
  return outcome.error ? `${what} (${outcome.error})` : what;
}

/**
 * Errors that leave no doubt the upstream never got the request: no connection was made (or
 * none was free in time). After any other failure (a reset, a closed keep-alive connection, an
 * answer driftguard would not pass on) the upstream may have read the request and acted on it.
 */
const NEVER_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT', CONNECTION_WAIT_TIMEOUT]);

/** The upstream closed or reset the connection under a request (or had closed a kept-alive one). */
export const CLOSED_UNDER = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET']);
/** The upstream was reached, and closed or reset the connection before its answer was whole. */
const CUT = new Set([...CLOSED_UNDER, 'UND_ERR_CLOSED']);
/** The upstream answered, in a form undici will not pass on (a head over 15 KiB, a length that disagrees with the body). */
const REFUSED_ANSWER = new Set(['UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_EXCEEDED_MAX_SIZE']);

/** Whether a failed forwarding surely never reached the upstream (a write may then be sent again). */
export function neverSent(outcome: ForwardOutcome): boolean {
  return outcome.notSent === true || outcome.unwritten === true || (outcome.failure !== undefined && outcome.error !== undefined && NEVER_SENT.has(outcome.error));
}

/** A 101 to another protocol than the WebSocket the client asked for (RFC 9110 §7.8): never tunneled. */
export const UPSTREAM_UPGRADE_MISMATCH = 'UPSTREAM_UPGRADE_MISMATCH';

/** An upstream answer under a transfer coding other than chunked (both terminal stages refuse it). */
export const UPSTREAM_TRANSFER_CODING = 'UPSTREAM_TRANSFER_CODING';

/**
 * The error to abort with when an answer's Transfer-Encoding is anything but chunked: undici
 * takes off chunked only, so a body under another coding (gzip, chunked) would reach the client
 * still coded and with nothing saying so. undefined: the coding is fine.
 */
export function transferCodingError(coding: string | string[] | undefined): Error | undefined {
  if (coding === undefined || (Array.isArray(coding) ? coding.join(',') : coding).trim().toLowerCase() === 'chunked') return undefined;
  return Object.assign(new Error('the upstream used a transfer coding other than chunked'), { code: UPSTREAM_TRANSFER_CODING });
}

/** The outcome of an upstream error before any response started: a timeout is a 504, anything else a 502. */
export function failed(code: string, unwritten = false): ForwardOutcome {
  const outcome = { failure: TIMEOUTS.has(code) ? 'upstream-timeout' : 'upstream-unavailable', error: code, ...(unwritten ? { unwritten } : {}) } as const;
  return { ...outcome, detail: failureDetail(outcome) };
}

/**
 * Bounds the wait for an answer's final head once the upstream has sent an interim one.
 * undici restarts its wait for the head (headersTimeout, proxy.timeouts.response) at every
 * 1xx: an upstream sending 102 or 103 every few seconds, and never a final answer, held the
 * request, its client and its pool connection until the client's idle limit cut them (for
 * ever with clientIdle 0s), unanswered and recorded as the client leaving. From the later of
 * the first interim answer and the request's last byte, the final head must come within `ms`
 * more: else 504 upstream-timeout. Not while the request is still being sent: an
 * upstream may send 103 or 102 as soon as it has an upload's head, and undici's own wait does
 * not run while it writes the body either (the upload is as slow as its client).
 */
export class InterimWait {
  #timer?: NodeJS.Timeout;
  readonly #ms: number;
  #controller?: { abort(reason: Error): void };
  #sent = false;

  constructor(ms: number) { this.#ms = ms; }

  /** An interim answer came: the wait starts now, or once the request is sent. */
  interim(controller: { abort(reason: Error): void }): void {
    this.#controller ??= controller;
    if (this.#sent) this.#start();
  }

  /** undici wrote the request's last byte (onRequestSent). */
  sent(): void {
    this.#sent = true;
    if (this.#controller) this.#start();
  }

  /** Once (0 ms: no limit, as for undici's). */
  #start(): void {
    if (this.#timer !== undefined || this.#ms <= 0) return;
    const controller = this.#controller!;
    this.#timer = setTimeout(() => controller.abort(Object.assign(new Error('the upstream sent only interim (1xx) answers within proxy.timeouts.response'), { code: 'UND_ERR_HEADERS_TIMEOUT' })), this.#ms);
    this.#timer.unref();
  }

  /** The final head came, or the exchange ended. */
  stop(): void { clearTimeout(this.#timer); }
}
