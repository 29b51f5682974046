// What a cache in front of driftguard may keep: an answer decided on the caller's credential is
// that caller's, and one a shared cache could store (the upstream said `public`, `s-maxage` or
// `must-revalidate`, RFC 9111 §3.5) would be served to the same token past a revocation. A real
// RFC 9111 shared cache (undici's cache interceptor) in front of a real driftguard.

import t from 'tap';
import { Agent, interceptors, request } from 'undici';
import { world, startLifecycle, bearer } from '../lifecycle/support.ts';
import { AGENT } from '../support/driftguard.ts';
import { withOwnHeaders } from '../../proxy/forward/headers.ts';

for (const cc of ['public, max-age=600', 's-maxage=600', 'max-age=600, must-revalidate']) {
  t.test(`a shared cache in front does not serve a revoked token the answer it stored (upstream: Cache-Control: ${cc})`, async (t) => {
    const w = await world();
    const dg = await startLifecycle(w.rules());
    t.teardown(async () => { await dg.close(); await w.close(); });
    w.up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'cache-control': cc, 'content-type': 'text/plain' }); res.end('item 1'); };
    const cache = new Agent().compose(interceptors.cache({ type: 'shared' }));
    t.teardown(() => cache.close());
    const tok = await w.token();
    const get = async (through?: typeof cache) => {
      const r = await request(`${dg.url}/items/1`, { ...(through ? { dispatcher: through } : {}), headers: bearer(tok) });
      await r.body.text();
      return { status: r.statusCode, cacheControl: r.headers['cache-control'] };
    };
    const first = await get(cache);
    t.equal(first.status, 200);
    t.match(first.cacheControl, /(^|, )private$/, `${cc}: the answer is the caller's (${first.cacheControl})`);
    t.notMatch(first.cacheControl, /public|s-maxage/);
    const revoked = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
    t.equal(revoked.status, 201, 'revoked (from loopback: no admin credential file)');
    t.equal((await get()).status, 401, 'driftguard refuses the token');
    t.equal((await get(cache)).status, 401, 'and so does the path through the shared cache: nothing was stored for it');
  });
}

t.test('Cache-Control is rewritten only for an answer that depends on the credential, and only where a shared cache could store it', async (t) => {
  const gated = { vary: 'authorization, Contract-Version' };
  const cases: [string, string][] = [
    ['public, max-age=60', 'max-age=60, private'],
    ['max-age=60, s-maxage=300', 'max-age=60, private'],
    ['no-cache="set-cookie, x-a", must-revalidate', 'no-cache="set-cookie, x-a", must-revalidate, private'],
    ['private="x-user", public', 'private'],
    ['public, no-store', 'no-store'],
    // A quote left open runs to the end as one directive: nothing of it is split or lost.
    ['public, no-cache="a, b', 'no-cache="a, b, private'],
    ['must-revalidate, x="a\\", b"', 'must-revalidate, x="a\\", b", private'],
    ['max-age=60', 'max-age=60'],
    ['no-store', 'no-store'],
  ];
  for (const [theirs, expected] of cases) t.equal(withOwnHeaders({ 'cache-control': theirs }, gated)['cache-control'], expected, theirs);
  t.equal(withOwnHeaders({ 'cache-control': ['public', 'max-age=60'] }, gated)['cache-control'], 'max-age=60, private', 'over two lines');
  t.equal(withOwnHeaders({ 'cache-control': 'public, max-age=60' }, { vary: 'Contract-Version' })['cache-control'], 'public, max-age=60', 'a public operation\'s answer is left as the upstream made it');
  t.notOk('cache-control' in withOwnHeaders({}, gated), 'none is added where the upstream sent none (a shared cache stores no answer to a request with Authorization without one)');
  // One pass: an open quote followed by many escapes (an upstream's 15 KiB head) is read once.
  const long = `public, x="${'\\"'.repeat(7_000)}`;
  t.equal(withOwnHeaders({ 'cache-control': long }, gated)['cache-control'], `${long.slice('public, '.length)}, private`, 'a long open quote kept whole');
});

t.test('an upstream\'s earlier Sunset in any of the three HTTP-date forms stands against the rules\' later one (RFC 9110 §5.6.7)', async (t) => {
  const ours = { sunset: 'Thu, 01 Jan 2099 00:00:00 GMT' };
  for (const theirs of ['Sun, 01 Jun 2025 00:00:00 GMT', 'Sunday, 01-Jun-25 00:00:00 GMT', 'Sun Jun  1 00:00:00 2025']) {
    t.equal(withOwnHeaders({ sunset: theirs }, ours)['sunset'], theirs, theirs);
  }
  // Not a date, or a later one: the rules' stands.
  for (const theirs of ['Sun, 31 Feb 2025 00:00:00 GMT', 'soon', '1', 'Fri, 01 Jan 2100 00:00:00 GMT']) {
    t.equal(withOwnHeaders({ sunset: theirs }, ours)['sunset'], ours.sunset, theirs);
  }
});
