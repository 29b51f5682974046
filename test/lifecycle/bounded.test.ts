// Memory stays bounded whatever the number of consumers and the length of their subjects:
// 100,000 distinct subjects (an attacker rotating subjects), and subjects of kilobytes, go
// through the real monitor checks and the real observer. Minting and verifying 100,000
// tokens over HTTP would take minutes here, so this test drives the checks in-process with request contexts whose credential and consumer are
// already set (what the credential check leaves behind); the HTTP path of the same checks
// is covered by monitors.test.ts.

import t, { type Test } from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { IncomingMessage } from 'node:http';
import { loadRules } from '../../proxy/rules/load.ts';
import { lifecycle } from '../../proxy/lifecycle/index.ts';
import { checks } from '../../proxy/pipeline/checks.ts';
import { decider } from '../../proxy/pipeline/decide.ts';
import type { RequestContext } from '../../proxy/pipeline/types.ts';
import { Identity } from '../../proxy/identity/verify.ts';
import { BOT, writeRules } from '../support/driftguard.ts';
import { world, startLifecycle, monitorsOnly, bearer } from './support.ts';
import type { LifecycleState } from '../../proxy/lifecycle/state.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** The lifecycle checks and observer over rules with small tables; `request(i)` runs subject i. */
async function harness(t: Test, subjectOf: (i: number) => string) {
  const w = await world();
  t.teardown(() => w.close());
  const rules = loadRules(writeRules(w.rules((r) => {
    r.consumers.unknown = 'allow';
    r.monitors = {
      maxConsumers: 1000,
      retryStorm: { maxRepeats: 2, maxFingerprints: 2000 },
      idempotency: { at: 'medium', maxKeys: 2000 },
      traversal: { maxOperations: 2 },
      quarantine: { denials: 1, maxQuarantined: 500 },
    };
  })));
  const feature = await lifecycle(rules, () => {});
  t.teardown(() => feature.shutdown?.());
  const state = feature.deps!.lifecycle!;
  const identity = new Identity(rules.identity);
  t.teardown(() => identity.close());
  // Only the lifecycle checks after the credential: the credential check's output is given.
  const all = checks(rules, { identity, lifecycle: state });
  const names = ['revocation', 'quarantine', 'task-binding', 'delegation', 'retry-storm', 'traversal', 'idempotency'];
  const decide = decider(all.filter((c) => names.includes(c.name)), 'enforce');
  t.same(all.map((c) => c.name).filter((n) => names.includes(n)), names, 'the lifecycle checks are all in the pipeline, in this order');
  const ops = rules.contract.operations;
  const createItem = ops.find((o) => o.id === 'createItem')!;
  const getItem = ops.find((o) => o.id === 'getItem')!;

  async function request(i: number): Promise<void> {
    const subject = subjectOf(i);
    const write = i % 2 === 0;
    const ctx: RequestContext = {
      req: { method: write ? 'POST' : 'GET', headers: write ? { 'idempotency-key': `key-${i}`, 'content-length': '0' } : {} } as unknown as IncomingMessage,
      rules, now: Date.now(), warnings: [], checks: [], extra: {},
      target: { path: write ? '/items' : `/items/${i}`, segments: [], query: `?i=${i}` },
      operation: write ? createItem : getItem,
      credential: { issuer: 'x', subject, jti: `jti-${i}`, scopes: new Set(), expiresAtMs: Date.now() + 60_000, claims: { jti: `jti-${i}` }, cached: false },
      consumer: { subject, key: subject, kind: 'automation', registered: false },
      declaredContract: `junk-${i}`,
    };
    const observation = feature.observer!.begin(ctx);
    const decision = await decide(ctx);
    // Every third request is denied, which quarantines its subject (denials: 1).
    observation.decided(i % 3 === 0 ? { decision: 'deny', reason: 'insufficient-scope', detail: '', enforced: true, warnings: [] } : decision);
    observation.end(200);
  }
  return { monitors: state.monitors, request };
}

function heapUsed(): number {
  gc();
  return process.memoryUsage().heapUsed;
}

t.test('100,000 distinct subjects keep every monitor table within its hard size', async (t) => {
  const { monitors: m, request } = await harness(t, (i) => `spiffe://attacker.example/agent-${i}`);
  for (let i = 0; i < 20_000; i++) await request(i);
  const warm = heapUsed();
  for (let i = 20_000; i < 100_000; i++) await request(i);
  const after = heapUsed();

  t.equal(m.consumers.size, 1000, 'consumer state: at most maxConsumers');
  t.ok(m.fingerprints.size <= 2000, `fingerprints: ${m.fingerprints.size} <= 2000`);
  t.ok(m.keys.size <= 2000, `idempotency keys: ${m.keys.size} <= 2000`);
  t.equal(m.quarantined.size, 500, 'quarantines: at most maxQuarantined');
  // Once every table is full, 80,000 more subjects must not grow the heap (allow GC noise).
  const grown = after - warm;
  t.ok(grown < 8 * 1024 * 1024, `heap grew ${(grown / 1048576).toFixed(1)} MiB over the last 80,000 subjects`);
});

// Subjects of 8,000 characters: ASCII; Cyrillic; and ASCII with one Cyrillic letter, which V8
// holds at two bytes a character although its UTF-8 is barely longer than the ASCII one.
// Flat strings, as JSON.parse makes them from a token (repeat() makes a tree of shared parts).
const shapes = {
  ascii: (i: number) => 'a'.repeat(8000 - String(i).length) + i,
  cyrillic: (i: number) => 'Ж'.repeat(8000 - String(i).length) + i,
  'one Cyrillic letter': (i: number) => 'Ж' + 'a'.repeat(7999 - String(i).length) + i,
};
for (const [shape, tail] of Object.entries(shapes)) {
  t.test(`subjects of 8,000 characters (${shape}) hold no more memory than usual ones`, async (t) => {
    // A token may carry a subject of many kilobytes (up to the 16 KiB header limit). Keyed by
    // the subject, 1,000 consumers, 2,000 fingerprints, 2,000 keys and 500 quarantines of 8 KB
    // subjects held 28.5 MiB here.
    const long = (i: number) => JSON.parse(JSON.stringify(`spiffe://attacker.example/${tail(i)}`)) as string;
    const base = heapUsed();
    const { monitors: m, request } = await harness(t, long);
    for (let i = 0; i < 10_000; i++) await request(i);
    const held = heapUsed() - base;
    t.ok(held < 8 * 1024 * 1024, `tables full of such subjects hold ${(held / 1048576).toFixed(1)} MiB`);
    const oneByte = shape === 'ascii';
    t.ok(m.consumers.size < 1000 / (oneByte ? 4 : 8), `a consumer with such a subject counts for several: ${m.consumers.size} held`);
    t.equal(m.quarantined.size, 500, 'quarantines are kept by a hash of a long subject: one size each');
    t.ok([...m.quarantined.keys()].every((k) => k.length === 129), 'keys of 129 characters, past any subject kept as it is');
    t.ok(m.quarantines(Date.now()).every((q) => q.subject.length === 131 && q.subject.endsWith('...')), 'the subject shown shortened');
    t.ok([...m.fingerprints.keys(), ...m.keys.keys()].every((k) => k.length === 44), 'fingerprints and idempotency keys are hashes: one size whatever the subject');
  });
}

t.test('a consumer is weighed again as its state grows', async (t) => {
  const { monitors: m } = await harness(t, String);
  const s = m.consumer('spiffe://example.test/grows', 'automation', undefined, 0);
  t.equal(m.consumers.calculatedSize, 1, 'a new consumer with a short subject: one unit');
  for (let i = 0; i < 40; i++) m.count(s, i % 2 ? 'deny' : 'would-deny', `reason-${i}`);
  t.ok(m.consumers.calculatedSize >= 2, `40 reasons later: ${m.consumers.calculatedSize} units (before: still 1)`);
});

t.test('a consumer is weighed by the denials it holds: quarantine.denials raised by a reload is weighed as at start', async (t) => {
  // Weighed by quarantine.denials as it was at start-up (20 here), a consumer holding hundreds
  // after a reload raised it counted as one unit: the table's heap bound no longer held.
  const w = await world();
  t.teardown(() => w.close());
  const rules = (denials: number) => w.rules((r) => { r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials, window: '1h' } }); });
  const sizes: Record<string, { denials: number; units: number }> = {};
  for (const how of ['at start', 'by a reload'] as const) {
    const dg = await startLifecycle(rules(how === 'at start' ? 100_000 : 20));
    if (how === 'by a reload') await dg.dg.swap(loadRules(writeRules(rules(100_000))));
    // BOT calls an operation outside its declared ones: each call a denial that counts.
    const tok = await w.token({ sub: BOT });
    const one = async () => { const r = await fetch(`${dg.url}/items`, { headers: bearer(tok) }); await r.text(); };
    for (let i = 0; i < 600; i += 20) await Promise.all(Array.from({ length: 20 }, one));
    const m = (dg.feature.deps as { lifecycle: LifecycleState }).lifecycle.monitors;
    sizes[how] = { denials: Math.max(...[...m.consumers.values()].map((s) => s.denials.length)), units: m.consumers.calculatedSize };
    await dg.close();
  }
  t.equal(sizes['at start']!.denials, 600, 'six hundred denials held');
  t.equal(sizes['by a reload']!.denials, 600, 'either way');
  // 600 denials of 32 bytes are weighed as 1,024: 32 KiB, 16 units of 2 KiB, and the rest.
  t.ok(sizes['by a reload']!.units >= 17, `weighed ${sizes['by a reload']!.units} units after the reload`);
  t.equal(sizes['by a reload']!.units, sizes['at start']!.units, 'as much as a consumer started with that setting');
});

t.test('a subject that is another\'s key lifts its own quarantine, not the other\'s', async (t) => {
  // A subject can be any string, a long subject's key included: read as a key, lifting it
  // by subject would lift the other (found by a review helper).
  const { monitors: m } = await harness(t, String);
  const q = { kind: 'automation' as const, sinceMs: 0, untilMs: Infinity, mode: 'enforce' as const, reasons: [] };
  const victim = 'spiffe://example.test/' + 'v'.repeat(200);
  m.quarantineFor(victim, q);
  const key = m.quarantines(1)[0]!.key!;
  m.quarantineFor(key, q);
  t.equal(m.quarantines(1).length, 2, 'two quarantines: the victim\'s and that of the subject spelled like its key');
  const lifted = m.lift(key, 1);
  t.ok(lifted && lifted.key !== key, 'lifted by subject: that subject\'s own quarantine (under its own hash), not the victim\'s');
  t.ok(m.quarantine(victim, 1), 'the victim is still quarantined');
  t.ok(m.liftKey(key, 1) && !m.quarantine(victim, 1), 'lifted by its key, through liftKey only');
});

t.test('a subject too large for the whole table is still kept: alone', async (t) => {
  const { monitors: m } = await harness(t, String);
  const huge = 'spiffe://attacker.example/' + 'a'.repeat(3_000_000);
  m.quarantineFor(huge, { kind: 'automation', sinceMs: 0, untilMs: Infinity, mode: 'enforce', reasons: [] });
  t.ok(m.quarantine(huge, 1), 'quarantined');
  t.ok(m.lift(huge, 1) && !m.quarantine(huge, 1), 'and lifted by the same subject');
  m.consumer('short', 'automation', undefined, 0);
  t.equal(m.consumers.size, 1);
  m.consumer(huge, 'automation', undefined, 0);
  t.same([...m.consumers.keys()], [huge], 'the huge subject pushed every other out (lru-cache would drop an entry larger than the table)');
});
