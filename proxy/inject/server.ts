// The HTTPS shell around mutate(): the API server POSTs AdmissionReviews to /mutate.
// Every body gets an answer: 400 for a body that is not an AdmissionReview, otherwise
// 200 with the AdmissionReview response (allowed or not). A handler error is caught
// and answered with 500, never a crash. The certificate files are re-read when they
// change on disk (cert-manager and the chart rotate them in the mounted Secret).

import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { mutate, type MutationResult } from './mutate.ts';
import type { InjectorConfig } from './config.ts';
import { jsonFault } from '../lib/redact.ts';

export const MUTATE_PATH = '/mutate';
/** Largest body accepted; a pod object is bounded by etcd's 1.5 MiB request limit. */
export const MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface LogRecord {
  readonly level: 'info' | 'warn' | 'error';
  readonly msg: string;
  readonly [key: string]: unknown;
}

export interface InjectorServerOptions {
  readonly config: InjectorConfig;
  readonly tlsCertFile: string;
  readonly tlsKeyFile: string;
  readonly host: string;
  readonly port: number;
  /**
   * Bytes of review bodies held at once, arriving or read (default 16 MiB): a body that would
   * pass it gets 503. Bodies are read as they arrive, each whole before it is parsed, and
   * parsed and answered one at a time (synchronously), so the heap holds one parsed pod at most.
   */
  readonly maxBodyBytesHeld?: number;
  /**
   * How long a review's body may take to arrive after its head, in milliseconds (default
   * 5000; the API server sends it at once): a later one gets 408 and its connection closed.
   */
  readonly bodyDeadlineMs?: number;
  /** How often the certificate files are checked for a change, in milliseconds (default 30000; 0: never). */
  readonly certCheckIntervalMs?: number;
  readonly log?: (record: LogRecord) => void;
}

export interface InjectorServer {
  readonly server: Server;
  /** The bound address (useful with port 0). */
  readonly address: AddressInfo;
  /**
   * Starts the drain: every answer from now on says `Connection: close`, and idle keep-alive
   * connections are closed at once. The API server pools its connections, and one through the
   * Service stays pinned to this pod after it leaves the endpoints; closed cleanly after an
   * answer, its next review opens a new connection to a ready replica. Kept open, the final
   * close() would reset it, perhaps under a review the API server does not retry.
   */
  drain(): void;
  /** Stops accepting, lets in-flight reviews finish, then resolves. */
  close(): Promise<void>;
}

export async function startInjectorServer(options: InjectorServerOptions): Promise<InjectorServer> {
  const log = options.log ?? ((r: LogRecord) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...r })}\n`));
  let cert = readFileSync(options.tlsCertFile);
  let key = readFileSync(options.tlsKeyFile);

  const limits: BodyLimits = { held: new Budget(options.maxBodyBytesHeld ?? 16 * 1024 * 1024), deadlineMs: options.bodyDeadlineMs ?? 5_000 };
  let draining = false;
  const server = createServer({ cert, key, minVersion: 'TLSv1.2' }, (req, res) => {
    // Set before any answer is written, so each of them (sendText's and review's) carries it.
    if (draining) res.setHeader('connection', 'close');
    handle(req, res, options.config, log, limits).catch((err: unknown) => {
      log({ level: 'error', msg: 'admission handler failed', error: String((err as Error)?.message ?? err) });
      if (!res.headersSent) sendText(res, 500, 'internal error\n');
      else res.destroy();
    });
  });
  server.requestTimeout = 15_000;
  server.headersTimeout = 10_000;
  // The API server keeps idle webhook connections 90 s and does not send a review again that
  // met the close of one: with Node's 5 s, a review sent as the injector closed an idle
  // connection was lost, and its pod refused (failurePolicy: Fail). The client closes first now;
  // a stop still closes them (close()).
  server.keepAliveTimeout = 120_000;
  server.on('tlsClientError', (err) => log({ level: 'warn', msg: 'TLS handshake failed', error: err.message }));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => { server.off('error', reject); resolve(); });
  });

  // Rotation: compare the bytes, swap the secure context only when they changed and
  // the new pair is usable; a half-written pair keeps the old one until the next check.
  const interval = options.certCheckIntervalMs ?? 30_000;
  const timer = interval > 0 ? setInterval(() => {
    try {
      const newCert = readFileSync(options.tlsCertFile);
      const newKey = readFileSync(options.tlsKeyFile);
      if (newCert.equals(cert) && newKey.equals(key)) return;
      server.setSecureContext({ cert: newCert, key: newKey, minVersion: 'TLSv1.2' });
      cert = newCert; key = newKey;
      log({ level: 'info', msg: 'TLS certificate reloaded' });
    } catch (err) {
      log({ level: 'warn', msg: 'TLS certificate reload failed; keeping the current one', error: (err as Error).message });
    }
  }, interval) : undefined;
  timer?.unref();

  return {
    server,
    address: server.address() as AddressInfo,
    drain: () => {
      draining = true;
      server.closeIdleConnections();
    },
    close: () => new Promise<void>((resolve) => {
      if (timer) clearInterval(timer);
      server.close(() => resolve());
      server.closeIdleConnections();
    }),
  };
}

/** Bytes held at once, up to a limit. */
class Budget {
  readonly #limit: number;
  #held = 0;
  constructor(limit: number) { this.#limit = limit; }
  take(n: number): boolean {
    if (this.#held + n > this.#limit) return false;
    this.#held += n;
    return true;
  }
  give(n: number): void { this.#held -= n; }
}

interface BodyLimits { readonly held: Budget; readonly deadlineMs: number }

async function handle(req: IncomingMessage, res: ServerResponse, config: InjectorConfig, log: (r: LogRecord) => void, limits: BodyLimits): Promise<void> {
  const path = (req.url ?? '').split('?')[0];
  if (path === '/healthz' || path === '/readyz') {
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'method not allowed\n', { allow: 'GET, HEAD' });
    return sendText(res, 200, 'ok\n');
  }
  if (path !== MUTATE_PATH) return sendText(res, 404, 'not found\n');
  if (req.method !== 'POST') return sendText(res, 405, 'method not allowed\n', { allow: 'POST' });

  const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (contentType !== 'application/json') {
    req.resume();
    return sendText(res, 415, 'expected Content-Type: application/json\n');
  }
  // Read whole before anything else: a body trickled in holds only its own bytes and its
  // connection, until the deadline; before, it held one of a few turns for as long as Node's
  // request timeout allowed (15 to 45 s), and four of them stopped every pod's admission.
  const body = await readBody(req, limits);
  if (body === 'too large') return sendText(res, 413, `body larger than ${MAX_BODY_BYTES} bytes\n`, { connection: 'close' });
  if (body === 'too slow') return sendText(res, 408, `the body did not arrive within ${limits.deadlineMs} ms\n`, { connection: 'close' });
  if (body === 'too many') {
    log({ level: 'warn', msg: 'admission review refused: too many bodies held at once' });
    return sendText(res, 503, 'too many admission reviews at once\n', { 'retry-after': '1', connection: 'close' });
  }
  try {
    review(body, res, config, log);
  } finally {
    limits.held.give(body.length);
  }
}

/** Parsed and answered in one go: one parsed pod on the heap at a time. */
function review(body: Buffer, res: ServerResponse, config: InjectorConfig, log: (r: LogRecord) => void): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (err) {
    // Not JSON.parse's message, which quotes the pod's text (its environment) around the fault.
    log({ level: 'warn', msg: 'admission request is not JSON', error: jsonFault(err) });
    return sendText(res, 400, `body is ${jsonFault(err)}\n`);
  }
  const result: MutationResult = mutate(parsed, config);
  if (result.outcome === 'malformed') {
    log({ level: 'warn', msg: 'malformed AdmissionReview', outcome: result.outcome, error: result.message });
    return sendText(res, 400, `malformed AdmissionReview: ${result.message}\n`);
  }
  // The warnings too: for a pod a controller creates (a Deployment's), the API server hands
  // them to the controller, which drops them; the injector's log is where an admin sees them.
  const warnings = result.review.response.warnings;
  log({
    level: result.outcome === 'rejected' || (warnings?.length ?? 0) > 0 ? 'warn' : 'info',
    msg: 'admission review',
    uid: result.review.response.uid,
    outcome: result.outcome,
    reason: result.reason,
    namespace: result.namespace,
    pod: result.pod,
    ...(warnings?.length ? { warnings } : {}),
  });
  const json = JSON.stringify(result.review);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
  res.end(json);
}

/**
 * The body, whole, its bytes taken from the budget (the caller gives them back); or why not:
 * over MAX_BODY_BYTES, not arrived within the deadline, or the budget spent.
 */
function readBody(req: IncomingMessage, limits: BodyLimits): Promise<Buffer | 'too large' | 'too slow' | 'too many'> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (declared > MAX_BODY_BYTES) { req.resume(); resolve('too large'); return; }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (outcome: Buffer | 'too large' | 'too slow' | 'too many' | Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!Buffer.isBuffer(outcome)) { limits.held.give(size); chunks.length = 0; }
      if (outcome instanceof Error) reject(outcome); else resolve(outcome);
    };
    const timer = setTimeout(() => { req.pause(); finish('too slow'); }, limits.deadlineMs);
    req.on('data', (chunk: Buffer) => {
      if (done) return;
      if (size + chunk.length > MAX_BODY_BYTES) { req.resume(); finish('too large'); return; }
      if (!limits.held.take(chunk.length)) { req.pause(); finish('too many'); return; }
      size += chunk.length;
      chunks.push(chunk);
    });
    req.on('end', () => finish(Buffer.concat(chunks, size)));
    req.on('error', (err) => finish(err));
    req.on('close', () => { if (!req.complete) finish(new Error('the client closed the connection')); });
  });
}

function sendText(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
