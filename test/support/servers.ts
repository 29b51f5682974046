// Real loopback servers for tests: an upstream that records what reached it, and a JWKS
// server that can be taken down, slowed, and counted.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export function listen(server: Server, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as AddressInfo).port));
  });
}

export function close(server: Server): Promise<void> {
  return new Promise((resolve) => { server.close(() => resolve()); server.closeAllConnections?.(); });
}

export interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly rawHeaders: string[];
  bodyBytes: number;
}

export interface Upstream {
  readonly server: Server;
  readonly port: number;
  readonly origin: string;
  readonly seen: Seen[];
  /** Replace the default handler (which answers 200 JSON after reading the body). */
  handler?: (req: IncomingMessage, res: ServerResponse, seen: Seen) => void;
  close(): Promise<void>;
}

export async function upstream(): Promise<Upstream> {
  const u = {
    seen: [] as Seen[],
    handler: undefined as Upstream['handler'],
  } as Upstream & { server: Server; port: number; origin: string };
  const server = createServer((req, res) => {
    const seen: Seen = { method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, bodyBytes: 0 };
    u.seen.push(seen);
    if (u.handler) return u.handler(req, res, seen);
    req.on('data', (c: Buffer) => { seen.bodyBytes += c.length; });
    req.on('end', () => {
      const body = JSON.stringify({ ok: true, url: req.url, bodyBytes: seen.bodyBytes });
      res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'yes' });
      res.end(body);
    });
  });
  const port = await listen(server);
  Object.assign(u, { server, port, origin: `http://127.0.0.1:${port}`, close: () => close(server) });
  return u;
}

export interface JwksServer {
  readonly url: string;
  readonly port: number;
  fetches: number;
  /** Answer 503 while true. */
  down: boolean;
  /** Answer this many ms late (a slow identity provider). */
  delayMs: number;
  body: unknown;
  close(): Promise<void>;
}

export async function jwksServer(body: unknown): Promise<JwksServer> {
  const j = { fetches: 0, down: false, delayMs: 0, body } as JwksServer;
  const server = createServer((req, res) => {
    j.fetches++;
    const answer = () => {
      if (j.down) { res.writeHead(503).end(); return; }
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
      res.end(JSON.stringify(j.body));
    };
    if (j.delayMs > 0) setTimeout(answer, j.delayMs); else answer();
  });
  const port = await listen(server);
  Object.assign(j, { port, url: `http://127.0.0.1:${port}/jwks.json`, close: () => close(server) });
  return j;
}
