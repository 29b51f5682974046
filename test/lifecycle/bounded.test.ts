// Memory stays bounded whatever the number of consumers: 100,000 distinct subjects (an
// attacker rotating subjects) go through the real monitor checks and the real observer.
// Minting and verifying 100,000 tokens over HTTP would take minutes here, so this test
// drives the checks in-process with request contexts whose credential and consumer are
// already set (what the credential check leaves behind); the HTTP path of the same checks
// is covered by monitors.test.ts.

import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { IncomingMessage } from 'node:http';
import { loadRules } from '../../proxy/rules/load.ts';
import { lifecycle } from '../../proxy/lifecycle/index.ts';
import { checks } from '../../proxy/pipeline/checks.ts';
import { decider } from '../../proxy/pipeline/decide.ts';
import type { RequestContext } from '../../proxy/pipeline/types.ts';
import { Identity } from '../../proxy/identity/verify.ts';
import { writeRules } from '../support/driftguard.ts';
import { world } from './support.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

t.test('100,000 distinct subjects keep every monitor table within its hard size', async (t) => {
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
    const subject = `spiffe://attacker.example/agent-${i}`;
    const write = i % 2 === 0;
    const ctx: RequestContext = {
      req: { method: write ? 'POST' : 'GET', headers: write ? { 'idempotency-key': `key-${i}`, 'content-length': '0' } : {} } as unknown as IncomingMessage,
      rules, now: Date.now(), warnings: [], checks: [], extra: {},
      target: { path: write ? '/items' : `/items/${i}`, segments: [], query: `?i=${i}` },
      operation: write ? createItem : getItem,
      credential: { issuer: 'x', subject, jti: `jti-${i}`, scopes: new Set(), expiresAtMs: Date.now() + 60_000, claims: { jti: `jti-${i}` }, cached: false },
      consumer: { subject, kind: 'automation', registered: false },
      declaredContract: `junk-${i}`,
    };
    const observation = feature.observer!.begin(ctx);
    const decision = await decide(ctx);
    // Every third request is denied, which quarantines its subject (denials: 1).
    observation.decided(i % 3 === 0 ? { decision: 'deny', reason: 'insufficient-scope', detail: '', enforced: true, warnings: [] } : decision);
    observation.end(200);
  }

  for (let i = 0; i < 20_000; i++) await request(i);
  gc();
  const warm = process.memoryUsage().heapUsed;
  for (let i = 20_000; i < 100_000; i++) await request(i);
  gc();
  const after = process.memoryUsage().heapUsed;

  const m = state.monitors;
  t.equal(m.consumers.size, 1000, 'consumer state: at most maxConsumers');
  t.ok(m.fingerprints.size <= 2000, `fingerprints: ${m.fingerprints.size} <= 2000`);
  t.ok(m.keys.size <= 2000, `idempotency keys: ${m.keys.size} <= 2000`);
  t.equal(m.quarantined.size, 500, 'quarantines: at most maxQuarantined');
  // Once every table is full, 80,000 more subjects must not grow the heap (allow GC noise).
  const grown = after - warm;
  t.ok(grown < 8 * 1024 * 1024, `heap grew ${(grown / 1048576).toFixed(1)} MiB over the last 80,000 subjects`);
  await feature.shutdown?.();
});
