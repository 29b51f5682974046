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
   * Reviews read and handled at once (default 4); more wait, body unread, up to
   * `maxWaitingReviews` (default 64), and beyond get 503. A review holds its body and its
   * parsed pod (up to 4 MiB, several times that parsed): 30 large ones at once took the
   * injector to 177-295 MiB against its 128Mi limit. A review takes milliseconds, so four
   * at a time still answer thousands a second.
   */
  readonly maxConcurrentReviews?: number;
  readonly maxWaitingReviews?: number;
  /** How often the certificate files are checked for a change, in milliseconds (default 30000; 0: never). */
  readonly certCheckIntervalMs?: number;
  readonly log?: (record: LogRecord) => void;
}

export interface InjectorServer {
  readonly server: Server;
  /** The bound address (useful with port 0). */
  readonly address: AddressInfo;
  /** Stops accepting, lets in-flight reviews finish, then resolves. */
  close(): Promise<void>;
}

export async function startInjectorServer(options: InjectorServerOptions): Promise<InjectorServer> {
  const log = options.log ?? ((r: LogRecord) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...r })}\n`));
  let cert = readFileSync(options.tlsCertFile);
  let key = readFileSync(options.tlsKeyFile);

  const gate = new Gate(options.maxConcurrentReviews ?? 4, options.maxWaitingReviews ?? 64);
  const server = createServer({ cert, key, minVersion: 'TLSv1.2' }, (req, res) => {
    handle(req, res, options.config, log, gate).catch((err: unknown) => {
      log({ level: 'error', msg: 'admission handler failed', error: String((err as Error)?.message ?? err) });
      if (!res.headersSent) sendText(res, 500, 'internal error\n');
      else res.destroy();
    });
  });
  server.requestTimeout = 15_000;
  server.headersTimeout = 10_000;
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
    close: () => new Promise<void>((resolve) => {
      if (timer) clearInterval(timer);
      server.close(() => resolve());
      server.closeIdleConnections();
    }),
  };
}

/** At most `size` holders at once; at most `queue` waiting for a turn. */
class Gate {
  readonly #size: number;
  readonly #queue: number;
  #held = 0;
  readonly #waiting: (() => void)[] = [];
  constructor(size: number, queue: number) { this.#size = size; this.#queue = queue; }

  /** Resolves with a release function once it is this caller's turn, or with undefined when too many wait. */
  async enter(): Promise<(() => void) | undefined> {
    if (this.#held >= this.#size) {
      if (this.#waiting.length >= this.#queue) return undefined;
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else this.#held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      // The turn passes straight to the next waiter: the count stays.
      if (next) next(); else this.#held--;
    };
  }
}

async function handle(req: IncomingMessage, res: ServerResponse, config: InjectorConfig, log: (r: LogRecord) => void, gate: Gate): Promise<void> {
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
  const release = await gate.enter();
  if (!release) {
    req.resume();
    log({ level: 'warn', msg: 'admission review refused: too many waiting' });
    return sendText(res, 503, 'too many admission reviews at once\n', { 'retry-after': '1' });
  }
  try {
    await review(req, res, config, log);
  } finally {
    release();
  }
}

async function review(req: IncomingMessage, res: ServerResponse, config: InjectorConfig, log: (r: LogRecord) => void): Promise<void> {
  const body = await readBody(req);
  if (body === undefined) return sendText(res, 413, `body larger than ${MAX_BODY_BYTES} bytes\n`, { connection: 'close' });

  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (err) {
    log({ level: 'warn', msg: 'admission request is not JSON', error: (err as Error).message });
    return sendText(res, 400, `body is not valid JSON: ${(err as Error).message}\n`);
  }
  const result: MutationResult = mutate(parsed, config);
  if (result.outcome === 'malformed') {
    log({ level: 'warn', msg: 'malformed AdmissionReview', outcome: result.outcome, error: result.message });
    return sendText(res, 400, `malformed AdmissionReview: ${result.message}\n`);
  }
  log({
    level: result.outcome === 'rejected' ? 'warn' : 'info',
    msg: 'admission review',
    uid: result.review.response.uid,
    outcome: result.outcome,
    reason: result.reason,
    namespace: result.namespace,
    pod: result.pod,
  });
  const json = JSON.stringify(result.review);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
  res.end(json);
}

function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (declared > MAX_BODY_BYTES) { req.resume(); resolve(undefined); return; }
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > MAX_BODY_BYTES) { tooLarge = true; chunks.length = 0; return; }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(tooLarge ? undefined : Buffer.concat(chunks)));
    req.on('error', reject);
    // A client gone while the review waited for its turn: its abort was emitted before these
    // listeners, so 'close' (or the state now) is all that is left to end the wait on.
    req.on('close', () => { if (!req.complete) reject(new Error('the client closed the connection')); });
    if (req.destroyed && !req.complete) reject(new Error('the client closed the connection'));
  });
}

function sendText(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
