// An upstream answer under a transfer coding other than chunked (gzip, chunked): undici takes
// off the chunked layer only, so the client would get gzip bytes with nothing saying so. It
// gets a 502 instead; plain chunked answers, in any letter case, still stream through.

import t from 'tap';
import { gzipSync } from 'node:zlib';
import { world } from '../core/world.ts';

t.test('gzip, chunked from the upstream is a 502; chunked alone passes', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  let coding = 'gzip, chunked';
  w.up.handler = (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'transfer-encoding': coding });
    res.end(coding.includes('gzip') ? gzipSync('hello from upstream') : 'hello from upstream');
  };
  const coded = await w.call('GET', '/items/1', { token: tok });
  t.equal(coded.status, 502, 'not the coded bytes');
  t.equal(coded.json?.code, 'upstream-unavailable');
  t.match(coded.json?.detail, /transfer coding other than chunked \(UPSTREAM_TRANSFER_CODING\)/, 'the detail says which failure');
  t.equal(w.up.seen.length, 1, 'the upstream was called');

  for (const plain of ['chunked', 'Chunked']) {
    coding = plain;
    const ok = await w.call('GET', '/items/1', { token: tok });
    t.equal(ok.status, 200, `${plain}: passes`);
    t.equal(ok.text, 'hello from upstream');
  }
});
