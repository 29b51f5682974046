// Lifecycle settings follow the rules in force: a reload that is rejected (here: a new
// issuer whose keys cannot be fetched) must leave them as they were, and one that is
// accepted must apply them.

import t from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules } from '../support/driftguard.ts';
import type { LifecycleState } from '../../proxy/lifecycle/state.ts';
import { world, startLifecycle } from './support.ts';

t.test('a rejected reload leaves the lifecycle settings of the rules in force', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const state = dg.feature.deps!.lifecycle as LifecycleState;
  t.equal(state.config.monitors.quarantine.mode, 'enforce');

  const rejected = loadRules(writeRules(w.rules((r) => {
    r.monitors = { quarantine: { mode: 'off' } };
    r.identity.issuers.push({ issuer: 'https://unreachable.test.local', audiences: ['x'], algorithms: ['ES256'], jwks: { url: 'http://127.0.0.1:1/jwks.json', timeout: '200ms' } });
    for (const c of r.consumers.registry) c.issuer = r.identity.issuers[0].issuer;
  })));
  await t.rejects(dg.dg.swap(rejected), 'the swap fails: the new issuer has no keys');
  t.equal(state.config.monitors.quarantine.mode, 'enforce', 'the rejected rules did not take over');

  const accepted = loadRules(writeRules(w.rules((r) => { r.monitors = { quarantine: { mode: 'off' } }; })));
  await dg.dg.swap(accepted);
  t.equal(state.config.monitors.quarantine.mode, 'off', 'an accepted reload applies its settings');
});

t.test('a reload that changes a setting read only at start says it waits for a restart', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const state = dg.feature.deps!.lifecycle as LifecycleState;
  const warned = () => dg.logs.filter((l) => String(l.msg).startsWith('lifecycle settings changed by the reload take effect at the next restart'));

  await dg.dg.swap(loadRules(writeRules(w.rules((r) => { r.monitors = { quarantine: { denials: 7 } }; }))));
  t.equal(state.config.monitors.quarantine.denials, 7, 'a threshold follows the reload');
  t.same(warned(), [], 'and needs no warning');

  await dg.dg.swap(loadRules(writeRules(w.rules((r) => { r.monitors = { maxConsumers: 50, quarantine: { denials: 7 } }; r.revocation = { journal: '/tmp/dg-never-written.journal' }; }))));
  t.same(warned().map((l) => l.fields), [['revocation.journal', 'monitors.maxConsumers']], 'each field read only at start is named');
  t.equal(state.monitors.consumers.max, 5000, 'the table keeps its start-up bound (the default)');
});
