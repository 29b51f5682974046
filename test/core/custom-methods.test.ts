// Custom methods (Google's AIP-136: `POST /v1/orders/{id}:cancel`, as grpc-gateway and Envoy's
// gRPC-JSON transcoder route them) can be declared: a last segment `{id}:verb` takes a segment
// that ends in `:verb`. Where the contract declares a custom method, a plain variable that takes
// a last segment ending in it (`/v1/carts/1:export` for GET /v1/carts/{id}, with GET
// /v1/orders/{id}:export declared) is refused: such a gateway would run the custom method,
// whose scopes and sensitivity driftguard did not judge. Before, `{id}:export` could not be
// declared, and `/v1/orders/1:export` was decided as getOrder.

import t from 'tap';
import { buildMatcher } from '../../proxy/checks/operation.ts';
import { parseTemplate } from '../../proxy/rules/templates.ts';
import type { Operation } from '../../proxy/rules/types.ts';
import { world } from './world.ts';

const op = (id: string, path: string, method = 'GET'): Operation => ({ id, method, path, scopes: [], sensitivity: 'low', public: false } as Operation);
const getOrder = op('getOrder', '/v1/orders/{id}');
const exportOrder = op('exportOrder', '/v1/orders/{id}:export');
const cancelOrder = op('cancelOrder', '/v1/orders/{id}:cancel', 'POST');
const getCart = op('getCart', '/v1/carts/{id}');
const special = op('special', '/v1/orders/special:export');

t.test('templates: a custom method ends the path, after a whole variable', async (t) => {
  t.same(parseTemplate('/v1/orders/{id}:export'), { segments: [{ literal: 'v1' }, { literal: 'orders' }, { variable: 'id', verb: 'export' }], shape: '/v1/orders/{}:export' });
  t.match(parseTemplate('/v1/orders/{id}:export/items'), /a custom method \(:export\) ends the path/);
  t.match(parseTemplate('/v1/orders/{id}:ex-port'), /a variable must be a whole segment, like \{id\}, or end it with a custom method/);
  t.match(parseTemplate('/v1/orders/x{id}'), /a variable must be a whole segment/);
});

t.test('the matcher: a declared custom method, before the plain variable, after a literal', async (t) => {
  const match = buildMatcher([getOrder, exportOrder, cancelOrder, getCart, special]);
  t.equal(match('GET', ['v1', 'orders', '1']), getOrder);
  t.equal(match('GET', ['v1', 'orders', '1:export']), exportOrder);
  t.equal(match('GET', ['v1', 'orders', 'urn:isbn:1:export']), exportOrder, 'the value is what comes before the last colon');
  t.equal(match('GET', ['v1', 'orders', 'special:export']), special, 'a literal wins');
  t.equal(match('POST', ['v1', 'orders', '1:cancel']), cancelOrder);
  t.equal(match('GET', ['v1', 'orders', '1:cancel']), getOrder, 'a custom method of another method tree is no concern of GET\'s');
  t.equal(match('GET', ['v1', 'orders', ':export']), getOrder, 'no value before the colon: no custom method (the plain variable)');
  // Declared for orders, reached through the carts' variable: refused.
  t.same(match('GET', ['v1', 'carts', '1:export']), { by: 'verb', index: 2 });
  t.same(match('GET', ['v1', 'carts', '1%3Aexport']), { by: 'verb', index: 2 }, 'encoded, as a gateway that decodes reads it');
  t.same(match('HEAD', ['v1', 'carts', '1:export']), { by: 'verb', index: 2 }, 'HEAD, decided among the GET operations');
  t.equal(match('GET', ['v1', 'carts', 'urn:x']), getCart, 'a colon in an id, with no declared custom method after it, is an id');
  // A contract with no custom method keeps ids with colons whatever they end in.
  t.equal(buildMatcher([getCart])('GET', ['v1', 'carts', '1:export']), getCart);
});

/** Orders with custom methods (an export, a cancel) beside their plain operations, and carts without. */
const withOrders = (r: Record<string, any>): void => {
  r.contract.operations.push(
    { id: 'getOrder', method: 'GET', path: '/v1/orders/{id}', scopes: ['items.read'], sensitivity: 'low' },
    { id: 'exportOrder', method: 'GET', path: '/v1/orders/{id}:export', scopes: ['items.admin'], sensitivity: 'critical' },
    { id: 'updateOrder', method: 'POST', path: '/v1/orders/{id}', scopes: ['items.write'], sensitivity: 'low' },
    { id: 'cancelOrder', method: 'POST', path: '/v1/orders/{id}:cancel', scopes: ['items.admin'], sensitivity: 'critical' },
    { id: 'getCart', method: 'GET', path: '/v1/carts/{id}', scopes: ['items.read'], sensitivity: 'low' },
  );
};

t.test('over HTTP: the custom method is its own operation, with its own scopes', async (t) => {
  const w = await world(t, withOrders);
  const reader = await w.tok({ scope: 'items.read' });
  t.equal((await w.call('GET', '/v1/orders/1', { token: reader })).status, 200);
  const exported = await w.call('GET', '/v1/orders/1:export', { token: reader });
  t.equal(exported.status, 403, 'the export needs its own scope');
  t.equal(exported.json?.reason, 'insufficient-scope');
  const cart = await w.call('GET', '/v1/carts/1:export', { token: reader });
  t.equal(cart.status, 403);
  t.equal(cart.json?.reason, 'unknown-operation');
  t.match(cart.json?.detail, /path segment 3 ends in a custom method the contract declares for another path/);
});

// A router that ignores case (ASP.NET Core's complex segments, Express's default) runs the
// custom method for `1:EXPORT`: refused, as a literal in another case is (found by a fuzz review).
t.test('a custom method in another case or encoded is refused, not decided as the plain variable', async (t) => {
  const w = await world(t, withOrders);
  const reader = await w.tok({ scope: 'items.read items.write' });
  // Sanity: the lower-case spelling is judged as the export and refused for its scope.
  t.equal((await w.call('GET', '/v1/orders/1:export', { token: reader })).status, 403, 'baseline: 1:export needs items.admin');
  t.equal((await w.call('GET', '/v1/carts/1:export', { token: reader })).status, 403, 'baseline: carts/1:export refused (verb)');
  for (const [method, path] of [['GET', '/v1/orders/1:EXPORT'], ['GET', '/v1/orders/1:Export'], ['GET', '/v1/orders/1%3AEXPORT'], ['POST', '/v1/orders/1:CANCEL'], ['GET', '/v1/orders/1%3Aexport.json']] as const) {
    const before = w.up.seen.length;
    const a = await w.call(method, path, { token: reader, ...(method === 'POST' ? { body: '{}', headers: { 'content-type': 'application/json' } } : {}) });
    t.equal(a.status, 403, `${method} ${path}: refused (got ${a.status} ${a.json?.code ?? ''})`);
    t.equal(w.up.seen.length - before, 0, `${method} ${path}: not forwarded`);
  }
  // Another path, without the custom method: a gateway that routes custom methods compares
  // them as written, so an id that ends in one in another case is an id.
  t.equal((await w.call('GET', '/v1/carts/1:EXPORT', { token: reader })).status, 200, 'carts/1:EXPORT: getCart');
});

// A format suffix after a custom method: the stem is as long as its id, so it is looked for by
// the method, not by the bounded walk per dot (found by a review: a 120-character id was
// forwarded as getOrder).
t.test('a custom method with a format suffix is refused whatever the length of its id', async (t) => {
  const getOrder = op('getOrder', '/v1/orders/{id}');
  const match = buildMatcher([getOrder, op('exportOrder', '/v1/orders/{id}:export')]);
  for (const id of ['1', 'x'.repeat(60), 'x'.repeat(200), 'a.b'.repeat(100)]) {
    for (const last of [`${id}:export.json`, `${id}:EXPORT.json`, `${id}%3Aexport.json`]) {
      t.match(match('GET', ['v1', 'orders', last]), { by: 'suffix' }, `${last.length} characters, ${last.slice(-16)}`);
    }
  }
  t.equal(match('GET', ['v1', 'orders', `${'x'.repeat(200)}.json`]), getOrder, 'an id with a suffix and no custom method: the plain operation');
  t.equal(match('GET', ['v1', 'orders', ':export.json']), getOrder, 'no id before the method: no custom method');
});

// Found by a review of the check above: a method at the start hid a later one; the stem's slash twin.
{
  const getOrder = op('getOrder', '/v1/orders/{id}');
  const exportOrder = op('exportOrder', '/v1/orders/{id}:export');
  t.test('an earlier `:export.` at position 0 hides the later one (long ids only)', async (t) => {
    const match = buildMatcher([getOrder, exportOrder]);
    // short: the per-dot walk finds the stem `:export.x:export`
    t.match(match('GET', ['v1', 'orders', ':export.x:export.json']), { by: 'suffix' }, 'short id: refused');
    const long = `:export.${'x'.repeat(120)}:export.json`;
    t.match(match('GET', ['v1', 'orders', long]), { by: 'suffix' }, `long id (${long.length}): refused (got ${JSON.stringify((match('GET', ['v1', 'orders', long]) as any)?.id ?? match('GET', ['v1', 'orders', long]))})`);
    t.match(match('GET', ['v1', 'orders', `%3Aexport.${'x'.repeat(120)}:EXPORT.json`]), { by: 'suffix' }, 'encoded, capitals: refused');
  });

  t.test('trailing-slash twin of a long id with a custom method and a suffix', async (t) => {
    const getSlashed = op('getOrderSlash', '/v1/orders/{id}/');
    const match = buildMatcher([getSlashed, exportOrder]);
    t.match(match('GET', ['v1', 'orders', '1:export.json', '']), { by: 'suffix' }, 'short id: refused (the per-dot walk tries the stem\'s twin)');
    const long = `${'x'.repeat(120)}:export.json`;
    const got = match('GET', ['v1', 'orders', long, '']);
    t.match(got, { by: 'suffix' }, `long id: refused (got ${JSON.stringify((got as any)?.id ?? got)})`);
  });
}
