// proxy.connections, the upstream pool, follows proxy.clientConnections by default (each client
// connection forwards one request at a time), up to its maximum: raising clientConnections
// never makes the pool the limit unless connections is set lower.
import t from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';

const load = (patch: (r: Record<string, any>) => void) => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', patch))).proxy;

t.test('unset, the pool is clientConnections, at most 1024; set, as set', async (t) => {
  t.equal(load(() => {}).connections, 256, 'both defaults: 256');
  t.equal(load((r) => { r.proxy.clientConnections = 1000; }).connections, 1000);
  t.equal(load((r) => { r.proxy.clientConnections = 20_000; }).connections, 1024, 'at most the schema maximum');
  t.equal(load((r) => { r.proxy.clientConnections = 1000; r.proxy.connections = 64; }).connections, 64, 'a lower setting shields the upstream');
});
