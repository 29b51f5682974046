// The API behind every target: reads the request body, answers a small JSON document.
// Run as its own process so its cost lands on no target's CPU figure.

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const server = createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
  let bytes = 0;
  req.on('data', (c: Buffer) => { bytes += c.length; });
  req.on('end', () => {
    const body = JSON.stringify({ ok: true, method: req.method, url: req.url, bodyBytes: bytes, item: { id: 42, name: 'widget', quantity: 3 } });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
    res.end(body);
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
