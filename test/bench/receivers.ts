// What driftguard talks to besides the upstream: the issuer's JWKS over HTTP, and an
// OTLP/HTTP receiver that accepts trace exports (protobuf or JSON) as a collector would,
// counting what arrives so the report can show tracing was really on.

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

export interface Receiver {
  readonly url: string;
  close(): Promise<void>;
}

export async function jwksServer(jwks: unknown): Promise<Receiver & { fetches: number }> {
  const body = JSON.stringify(jwks);
  const r = { fetches: 0 } as Receiver & { fetches: number };
  const server = createServer((_req, res) => {
    r.fetches++;
    res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  const port = await listen(server);
  return Object.assign(r, { url: `http://127.0.0.1:${port}/.well-known/jwks.json`, close: () => new Promise<void>((res) => { server.close(() => res()); server.closeAllConnections(); }) });
}

export interface OtlpReceiver extends Receiver {
  /** Export requests per signal path (/v1/traces, /v1/metrics, /v1/logs). */
  readonly exports: Record<string, number>;
  readonly bytes: number;
  /** Spans counted in JSON exports (protobuf exports are counted in bytes only). */
  readonly jsonSpans: number;
}

export async function otlpReceiver(): Promise<OtlpReceiver> {
  const r = { exports: {} as Record<string, number>, bytes: 0, jsonSpans: 0 };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = (req.url ?? '/').split('?')[0]!;
      r.exports[path] = (r.exports[path] ?? 0) + 1;
      r.bytes += body.length;
      const json = (req.headers['content-type'] ?? '').includes('json');
      if (json && path === '/v1/traces') {
        try {
          const doc = JSON.parse(body.toString()) as { resourceSpans?: { scopeSpans?: { spans?: unknown[] }[] }[] };
          for (const rs of doc.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) r.jsonSpans += ss.spans?.length ?? 0;
        } catch { /* counted in bytes */ }
      }
      // An empty Export*ServiceResponse: `{}` in JSON, zero bytes in protobuf.
      if (json) res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      else res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 }).end();
    });
  });
  const port = await listen(server);
  return Object.assign(r, { url: `http://127.0.0.1:${port}`, close: () => new Promise<void>((res) => { server.close(() => res()); server.closeAllConnections(); }) }) as OtlpReceiver;
}
