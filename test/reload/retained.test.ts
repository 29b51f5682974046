// A reload releases the generation it replaced. The pool of a generation whose proxy settings
// changed is closed 30 s later, for the requests still using it; the timer that does so held
// the whole old generation (its rules, identity, checks) for those 30 s, and reloads every
// second or two of a large rules file ran the chart's 96 MiB heap out; and a closure of the
// start-up kept the rules read at start for the life of the process. Checked with WeakRefs and
// real collections (V8's gc, exposed for this process only).

import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules, startTest } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

t.test('a reload that changes the proxy settings does not keep the old generation alive', async (t) => {
  const up = await upstream();
  const keys = await jwksServer(jwks(await testKey('ES256')));
  const rules = baseRules(up.origin, keys.url);
  const dg = await startTest(rules);
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const gone: WeakRef<object>[] = [];
  for (const response of ['3s', '4s', '5s']) {
    gone.push(new WeakRef(dg.dg.generation.rules));
    rules.proxy.timeouts.response = response;
    writeFileSync(dg.file, stringify(rules));
    const before = dg.dg.generation.forwarder;
    await dg.dg.swap(loadRules(dg.file));
    t.not(dg.dg.generation.forwarder, before, `a new pool for response ${response}: the old one closes 30 s later`);
  }
  // A few collections, each in a turn of the event loop of its own: deref() keeps its target
  // alive until the end of the turn it was called in.
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setImmediate(r));
    gc();
    if (gone.every((r) => r.deref() === undefined)) break;
  }
  t.same(gone.map((r) => r.deref() === undefined), [true, true, true], 'each replaced generation\'s rules were collected, the first too (before: none of them)');
  t.equal((await fetch(dg.url + '/status')).status, 200, 'the generation in force serves');
});
