// The admin listener: a small route table that feature modules add to (health, readiness,
// metrics, decisions, revocations, ...). Kept apart from the traffic listener so that it
// can bind to loopback while traffic binds to the pod IP.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { gatherSmallChunks, MAX_HEADER_LINES } from '../lib/incoming.ts';
import { redactPath } from '../lib/redact.ts';
import type { Log } from '../features.ts';

export type AdminHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

interface Route { readonly method: string; readonly path: string | RegExp; readonly handler: AdminHandler }

/**
 * A request a web page sent: a page open on the operator's machine (or the pod's own app) can
 * send a simple cross-origin POST or a DELETE to a loopback port, and browsers mark it with
 * Origin or Sec-Fetch-Site, which no admin client (curl, a script, an operator) sends. Admin
 * writes refuse it.
 */
export function fromWebPage(req: IncomingMessage): boolean {
  return req.headers.origin !== undefined || (req.headers['sec-fetch-site'] !== undefined && req.headers['sec-fetch-site'] !== 'none');
}

/** Answer 403 to an admin write a web page sent (fromWebPage); true when it did. */
export function refusedFromWebPage(req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): boolean {
  if (!fromWebPage(req)) return false;
  routes.problem(res, 403, 'Forbidden', 'admin writes are not accepted from web pages (the request carries Origin or Sec-Fetch-Site)');
  return true;
}

/**
 * A Host an admin client sends: an IP address or localhost, with or without a port. A page on
 * evil.example whose name its DNS turns to 127.0.0.1 (DNS rebinding) is same-origin with it:
 * the browser then sends no Origin on a GET, and would read /decisions; its Host is the only
 * sign. (Absent, from HTTP/1.0, it is no page's.)
 */
const ADMIN_HOST = /^(?:localhost|127(?:\.\d{1,3}){3}|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/i;

export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/**
 * Who may make an admin write (a reload, a revocation, a release from quarantine): returns who
 * is writing, or undefined once it has answered the refusal. Without an admin credential file,
 * a client on loopback; the lifecycle feature puts its credential check here when it has one.
 */
export type WriteGuard = (req: IncomingMessage, res: ServerResponse) => string | undefined;

/** The WriteGuard without an admin credential file: a client on loopback, not a web page. */
export function loopbackOnly(req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): string | undefined {
  if (refusedFromWebPage(req, res, routes)) return undefined;
  if (isLoopback(req.socket.remoteAddress)) return 'loopback';
  routes.problem(res, 403, 'Forbidden', 'admin writes are accepted from loopback only when no admin credential file is configured');
  return undefined;
}

export class AdminRoutes {
  readonly #routes: Route[] = [];

  /** Every admin write asks this first (WriteGuard): loopbackOnly, unless a feature sets a stricter one. */
  authorizeWrite: WriteGuard = (req, res) => loopbackOnly(req, res, this);
  /** List answers being written (jsonList), by list: each holds the list it began with. */
  #lists = new Map<string, number>();

  /** Add a route; a RegExp path matches the whole pathname. Later routes cannot shadow earlier ones. */
  add(method: string, path: string | RegExp, handler: AdminHandler): void {
    this.#routes.push({ method, path, handler });
  }

  find(method: string, pathname: string): { handler?: AdminHandler; allowed: string[] } {
    const allowed: string[] = [];
    for (const r of this.#routes) {
      const hit = typeof r.path === 'string' ? r.path === pathname : r.path.test(pathname);
      if (!hit) continue;
      if (r.method === method || (method === 'HEAD' && r.method === 'GET')) return { handler: r.handler, allowed };
      // A GET route serves HEAD too (RFC 9110 §9.3.2), so Allow names it.
      allowed.push(...(r.method === 'GET' ? ['GET', 'HEAD'] : [r.method]));
    }
    return { allowed };
  }

  json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body, null, 2) + '\n';
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  /**
   * A JSON object whose `key` is a list that may be long (decisions, revocations, consumers):
   * `head`'s fields, then the list, one item a line, each item made by `view` as it is
   * written. It waits whenever the client's socket is full and yields to the event loop every
   * ITEMS_PER_TURN items, so the largest answer costs the memory of one item and traffic is
   * served between its parts. Built whole (an indented string of every item), one answer
   * from a full recent-decisions ring or a large revocation list ran the chart's 96 MiB heap
   * out of memory.
   */
  async jsonList<T>(res: ServerResponse, head: Record<string, unknown>, key: string, items: Iterable<T>, view: (item: T) => unknown): Promise<void> {
    // A HEAD answer has no body: no item is looked at.
    if (res.req.method === 'HEAD') { res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }); res.end(); return; }
    // Each answer holds its list (a page of /decisions, entries the ring has since let go)
    // until its client has read it: clients that never read, one per turn of the ring, held a
    // ring's worth each and ran the chart's heap out. So LIST_ANSWERS at once, each given
    // LIST_STALL_MS to take more and LIST_MS in all.
    // Places by list: clients that never read a large /decisions page, asking again as each
    // is cut, held both places, and the responder's GET /revocations was 503 nearly always.
    const writing = this.#lists.get(key) ?? 0;
    if (writing >= LIST_ANSWERS) {
      res.setHeader('retry-after', '1');
      this.problem(res, 503, 'Service Unavailable', `already ${LIST_ANSWERS} ${key} answers being written: try again`);
      return;
    }
    this.#lists.set(key, writing + 1);
    const deadline = setTimeout(() => res.destroy(), LIST_MS);
    try {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      const fields = JSON.stringify(head).slice(1, -1);
      let room = res.write(`{${fields}${fields ? ',' : ''}${JSON.stringify(key)}:[`);
      let i = 0;
      for (const item of items) {
        if (!room && !(await drained(res, LIST_STALL_MS))) res.destroy();
        else if (i > 0 && i % ITEMS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
        if (res.destroyed) return;
        room = res.write((i === 0 ? '\n' : ',\n') + JSON.stringify(view(item)));
        i++;
      }
      res.end(i === 0 ? ']}\n' : '\n]}\n');
    } finally {
      clearTimeout(deadline);
      this.#lists.set(key, this.#lists.get(key)! - 1);
    }
  }

  problem(res: ServerResponse, status: number, title: string, detail: string): void {
    const text = JSON.stringify({ type: 'about:blank', title, status, detail });
    res.writeHead(status, { 'content-type': 'application/problem+json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
}

/** Items of a list answer written between two turns of the event loop. */
const ITEMS_PER_TURN = 256;
/** Answers of one list written at once (jsonList). */
export const LIST_ANSWERS = 2;
/** How long a list answer's client may take nothing before it is cut, and how long it may take in all. */
export const LIST_STALL_MS = 10_000;
export const LIST_MS = 60_000;

/** Resolves true when `res` can take more, or is gone; false when it took nothing for `ms`. */
function drained(res: ServerResponse, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (more: boolean) => () => { clearTimeout(timer); res.off('drain', ready); res.off('close', ready); resolve(more); };
    const ready = done(true);
    const timer = setTimeout(done(false), ms);
    res.once('drain', ready);
    res.once('close', ready);
  });
}

/**
 * The admin listener, or with `only` a listener that serves just those paths (the probe
 * listener: health, readiness and metrics on the pod IP, everything else on loopback).
 */
/**
 * Connections an admin or probe listener holds at once: the kubelet, Prometheus and an
 * operator need a few, and each whose head is still arriving holds up to about 20 KiB of
 * heap (the probe listener is on the pod's IP).
 */
export const ADMIN_MAX_CONNECTIONS = 64;
/** A connection to the admin or probe listener that has sent nothing for this long is closed. */
export const SILENT_MS = 10_000;

export function createAdminServer(routes: AdminRoutes, log: Log, only?: ReadonlySet<string>): Server {
  /** Connections with an answer under way: one at a time each. */
  const answering = new WeakSet<Socket>();
  const server = createServer({
    maxHeaderSize: 16 * 1024,
    // A head within 10 s (the kubelet's and Prometheus's come at once, checked every 2 s), the
    // whole request within 30 s; each answer closes its connection.
    headersTimeout: 10_000, requestTimeout: 30_000, connectionsCheckingInterval: 2_000,
  }, async (req, res) => {
    // Node calls this for every request of what it read before any answer is written: one
    // write of 1,400 pipelined `GET /metrics` built and queued 1,400 whole texts, and a few
    // such connections ran the heap out. No admin or probe client pipelines: a second request
    // while an answer is under way ends the connection, and what it queued with it.
    const socket = req.socket;
    if (answering.has(socket)) { socket.destroy(); return; }
    answering.add(socket);
    res.once('close', () => { answering.delete(socket); });
    gatherSmallChunks(req);
    // A connection kept alive between requests would let anybody who reaches the listener
    // hold its places with a request every few seconds (a 404 as well as a 200): the app, on
    // the admin listener's loopback, kept an operator's POST /revocations out; anybody who
    // reaches the pod, the kubelet's probes (which open a connection each time anyway). So
    // every answer closes its connection.
    res.setHeader('connection', 'close');
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin.invalid');
    } catch {
      routes.problem(res, 400, 'Bad Request', 'unparsable request-target');
      return;
    }
    if (only && !only.has(url.pathname)) {
      routes.problem(res, 404, 'Not Found', `${redactPath(url.pathname)} is served on the admin listener only`);
      return;
    }
    if (!only && req.headers.host !== undefined && !ADMIN_HOST.test(req.headers.host)) {
      routes.problem(res, 403, 'Forbidden', 'the admin listener answers requests for an IP address or localhost only (a name that resolves here may be a web page\'s: DNS rebinding)');
      return;
    }
    const { handler, allowed } = routes.find(req.method ?? 'GET', url.pathname);
    if (!handler) {
      if (allowed.length) { res.setHeader('allow', allowed.join(', ')); routes.problem(res, 405, 'Method Not Allowed', `use ${allowed.join(', ')}`); }
      else routes.problem(res, 404, 'Not Found', `no admin endpoint ${redactPath(url.pathname)}`);
      return;
    }
    try {
      await handler(req, res, url);
    } catch (err) {
      // The error's name only: a message may quote what the request carried.
      log({ level: 'error', msg: 'admin request failed', method: req.method, path: url.pathname, error: (err as Error)?.name ?? typeof err, answer: res.headersSent ? 'cut off' : '500' });
      if (!res.headersSent) routes.problem(res, 500, 'Internal Server Error', (err as Error).message);
      else res.destroy();
    }
  });
  server.maxConnections = ADMIN_MAX_CONNECTIONS;
  // A connection that has sent nothing is closed after 10 s (Node times a head only once it has
  // begun): idle ones would hold the kubelet's places for good. Not the socket's idle timeout,
  // which would also cut a POST /reload waiting on a key server.
  server.on('connection', (socket: Socket) => {
    const silent = setTimeout(() => { if (socket.bytesRead === 0) socket.destroy(); }, SILENT_MS).unref();
    socket.once('close', () => { clearTimeout(silent); });
  });
  // The kubelet and Prometheus send a few.
  server.maxHeadersCount = MAX_HEADER_LINES;
  return server;
}
