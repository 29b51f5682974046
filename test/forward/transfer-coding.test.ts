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

t.test('an answer without content (to HEAD, a 304) that names gzip, chunked is passed on: nothing could reach the client coded', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  // Raw, as an upstream may write it (RFC 9112 §6.1: the codings a GET's answer would have).
  w.up.handler = (req, res) => {
    req.resume();
    const status = req.headers['if-none-match'] ? '304 Not Modified' : '200 OK';
    res.socket!.end(`HTTP/1.1 ${status}\r\netag: "v1"\r\ntransfer-encoding: gzip, chunked\r\n\r\n`);
  };
  // Before: 502 upstream-unavailable for both, an outage of every cache revalidation.
  const head = await fetch(`${w.dg.url}/items/1`, { method: 'HEAD', headers: { authorization: `Bearer ${tok}` } });
  t.equal(head.status, 200, 'HEAD');
  t.equal(head.headers.get('etag'), '"v1"');
  const revalidated = await fetch(`${w.dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}`, 'if-none-match': '"v1"' } });
  t.equal(revalidated.status, 304, 'a conditional GET');
  await revalidated.arrayBuffer();
});

t.test('an upstream answer undici cannot parse is a 502 that says so; a 204 loses a Content-Length it must not have', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  let answer = '';
  // Written straight to the socket: Node's own serializer would refuse these bytes.
  w.up.handler = (req, res) => { req.resume(); res.socket!.end(answer, 'latin1'); };
  for (const [what, bytes] of [['a control byte in a header', 'HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 2\r\n\r\nok'], ['obs-fold', 'HTTP/1.1 200 OK\r\nX-Ctl: a\r\n b\r\nContent-Length: 2\r\n\r\nok']]) {
    answer = bytes!;
    const bad = await w.call('GET', '/items/1', { token: tok });
    t.equal(bad.status, 502, `${what}: 502`);
    t.equal(bad.json?.reason, 'upstream-unavailable');
    t.equal(bad.json?.detail, 'the upstream\'s answer could not be parsed (UPSTREAM_UNPARSABLE)', `${what}: the detail names the failure, not UNKNOWN`);
  }
  answer = 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Up: yes\r\n\r\n';
  const none = await w.call('GET', '/items/1', { token: tok });
  t.equal(none.status, 204);
  t.equal(none.headers.get('x-up'), 'yes', 'the upstream\'s other headers');
  t.equal(none.headers.get('content-length'), null, 'no Content-Length on a 204 (RFC 9110 §8.6)');
});
