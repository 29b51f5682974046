// An upstream answer head near 16 KiB. driftguard adds headers of its own to an answer
// (traceresponse, Vary, deprecation headers); a head it passed on whole just under 16 KiB
// reached the client over the 16 KiB Node's (and Envoy's) HTTP parser reads, and the caller
// got a parse error instead of an answer or a problem. Heads over UPSTREAM_MAX_HEAD are a 502.

import t from 'tap';
import { world } from '../core/world.ts';
import { UPSTREAM_MAX_HEAD } from '../../proxy/forward/forward.ts';

t.test('a head the client could not read is a 502; one it can is passed on', async (t) => {
  const w = await world(t);
  let size = 0;
  w.up.handler = (req, res) => {
    req.resume();
    // The rest of the head (status line, date, content-length, connection…) is about 150 bytes.
    res.writeHead(200, { 'content-type': 'text/plain', 'x-big': 'b'.repeat(size) });
    res.end('ok');
  };
  size = UPSTREAM_MAX_HEAD - 1024;
  const fits = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(fits.status, 200, 'a head with room for driftguard\'s headers is passed on');
  t.equal(fits.headers.get('x-big')?.length, size);
  size = 16 * 1024 - 150;
  const over = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(over.status, 502, 'just under 16 KiB from the upstream: a problem (before: passed on, and over 16 KiB at the client, a parse error)');
  t.equal(over.json?.reason, 'upstream-unavailable');
  t.match(over.json?.detail, /could not be passed on \(UND_ERR_HEADERS_OVERFLOW\)/);
});
