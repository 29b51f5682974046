// The log's reader goes away (a log shipper restarting, `driftguard run | head`): writes to
// its pipe fail with EPIPE, reported as an 'error' event on process.stdout or stderr. Unheard,
// that ended the sidecar with the first decision after it. A real subprocess whose pipes are
// closed by the reader.

import t from 'tap';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const up = await upstream();
const keys = await jwksServer(jwks(await testKey('ES256')));
t.teardown(async () => { await up.close(); await keys.close(); });

for (const pipe of ['stdout', 'stderr'] as const) {
  t.test(`a closed ${pipe}: the sidecar goes on answering`, async (t) => {
    const dg = await runDriftguard(writeRules(baseRules(up.origin, keys.url, (r) => {
      r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'stdout', allowSampleRate: 1 } };
    })));
    t.teardown(() => dg.kill());
    let exited = false;
    void dg.exited.then(() => { exited = true; });
    dg.child[pipe]!.destroy();
    // A reload writes log lines to stderr (and a decision line to stdout follows each request).
    await (await fetch(`${dg.admin}/reload`, { method: 'POST' })).text();
    await new Promise((r) => setTimeout(r, 100));
    await (await fetch(`${dg.admin}/reload`, { method: 'POST' })).text();
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${dg.url}/status`);
      await res.text();
      t.equal(res.status, 200, `request ${i + 1} answered`);
      await new Promise((r) => setTimeout(r, 30));
    }
    // The decision log flushes every 100 ms: several writes have met the closed pipe by now.
    await new Promise((r) => setTimeout(r, 300));
    t.notOk(exited, 'still running');
    const metrics = await (await fetch(`${dg.admin}/metrics`)).text();
    t.match(metrics, /^driftguard_decision_log_lines_total \d+/m, 'and reporting');
  });
}
