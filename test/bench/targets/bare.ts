// The floor: a reverse proxy written as simply as undici allows, with nothing but what any
// correct proxy must do (drop hop-by-hop headers, which undici refuses anyway, and stream
// both ways). Whatever driftguard costs above this is the price of its decisions.

import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect']);

function strip(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP.has(k)) out[k] = v;
  return out;
}

const pool = new Pool(process.argv[2]!, { connections: 64, keepAliveTimeout: 4_000 });

const server = createServer({ keepAliveTimeout: 5_000 }, async (req, res) => {
  try {
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    const up = await pool.request({ path: req.url!, method: req.method as 'GET', headers: strip(req.headers), body: hasBody ? req : null });
    res.writeHead(up.statusCode, strip(up.headers));
    up.body.on('error', () => res.destroy()).pipe(res);
  } catch {
    if (!res.headersSent) res.writeHead(502).end(); else res.destroy();
  }
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`);
});
process.on('SIGTERM', () => { void pool.close(); process.exit(0); });
