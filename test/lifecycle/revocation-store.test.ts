// The revocation store's index by value (proxy/lifecycle/revocations.ts): one key per value
// in the usual case, a Set of keys when several revocations name the same value (an admin
// revocation and a list entry for one leaked token, say). Lifting one of them must leave the
// others in force, whatever the order.

import t from 'tap';
import { RevocationStore, type Revocation, type RevocationSource } from '../../proxy/lifecycle/revocations.ts';
import type { Credential } from '../../proxy/pipeline/types.ts';

const NOW = 1_000_000;
const credential = (jti: string): Credential => ({ issuer: 'i', subject: 's', jti, scopes: new Set(), expiresAtMs: NOW + 60_000, claims: {}, cached: false });
const revocation = (source: RevocationSource, id: string, value: string, endMs = Infinity): Revocation =>
  ({ id, kind: 'jti', value, reason: 'r', endMs, createdMs: 0, source });

t.test('three revocations of one token: each lifted in turn, the others stay in force', async (t) => {
  for (const order of [['admin', 'file', 'url'], ['url', 'admin', 'file'], ['file', 'url', 'admin']] as const) {
    const store = new RevocationStore();
    store.add(revocation('admin', 'a1', 'leaked'));
    store.add(revocation('file', 'f1', 'leaked'));
    store.add(revocation('url', 'u1', 'leaked'));
    store.add(revocation('file', 'f2', 'other'));
    const ids: Record<RevocationSource, string> = { admin: 'a1', file: 'f1', url: 'u1' };
    for (const [i, source] of order.entries()) {
      t.ok(store.match(credential('leaked'), 'task_id', NOW), `${order}: in force before lifting ${source}`);
      t.equal(store.remove(source, ids[source])?.id, ids[source]);
      t.equal(store.match(credential('leaked'), 'task_id', NOW) !== undefined, i < 2, `${order}: after lifting ${source}, ${2 - i} left`);
    }
    t.equal(store.match(credential('other'), 'task_id', NOW)?.id, 'f2', 'another value untouched');
    t.equal(store.size, 1);
  }
});

t.test('an ended revocation of a shared value is dropped on lookup; the one in force answers', async (t) => {
  const store = new RevocationStore();
  store.add(revocation('admin', 'a1', 'leaked', NOW - 1));
  store.add(revocation('file', 'f1', 'leaked'));
  t.equal(store.match(credential('leaked'), 'task_id', NOW)?.id, 'f1');
  t.equal(store.size, 1, 'the ended one is gone');
  store.replaceSource('file', []);
  t.equal(store.match(credential('leaked'), 'task_id', NOW), undefined, 'and with the list replaced, none is left');
  t.equal(store.size, 0);
});

t.test('a revocation replaced under its own id moves to its new value', async (t) => {
  const store = new RevocationStore();
  store.add(revocation('admin', 'a1', 'old'));
  store.add(revocation('file', 'f1', 'old'));
  store.add(revocation('admin', 'a1', 'new'));
  t.equal(store.match(credential('old'), 'task_id', NOW)?.id, 'f1', 'the list entry still names the old value');
  t.equal(store.match(credential('new'), 'task_id', NOW)?.id, 'a1');
  store.remove('file', 'f1');
  t.equal(store.match(credential('old'), 'task_id', NOW), undefined);
});

t.test('a plain kid or jti matches it from every issuer; ["<issuer>","<value>"] from that issuer only', async (t) => {
  const of = (issuer: string, kid: string, jti = 'j'): Credential => ({ ...credential(jti), issuer, kid });
  for (const kind of ['kid', 'jti'] as const) {
    const value = (v: string) => kind === 'kid' ? of('A', v) : of('A', 'other-kid', v);
    const elsewhere = (v: string) => kind === 'kid' ? of('B', v) : of('B', 'other-kid', v);
    const store = new RevocationStore();
    store.add({ ...revocation('admin', 'scoped', '["A", "1"]'), kind });
    t.equal(store.match(value('1'), 'task_id', NOW)?.id, 'scoped', `${kind}: that issuer's, the pair however spaced`);
    t.equal(store.match(elsewhere('1'), 'task_id', NOW), undefined, `${kind}: not another issuer's`);
    store.add({ ...revocation('admin', 'plain', '2'), kind });
    t.equal(store.match(value('2'), 'task_id', NOW)?.id, 'plain', `${kind}: a plain value from one issuer`);
    t.equal(store.match(elsewhere('2'), 'task_id', NOW)?.id, 'plain', `${kind}: and from another`);
  }
});
