// After a reload, the one-second sweeper weighs an open stream's actors for a revocation by the
// rules in force, as a new request with the same token is judged (it weighed them by the rules
// the stream began under, and a revocation that refused the request left its stream open).
import t from 'tap';
import { eventStream, readStream } from '../support/tunnels.ts';
import { world, startLifecycle, bearer, trustAlso, until } from './support.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, HUMAN } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';

const OTHER = 'https://other.test.local';
const X = 'agent-x';
t.test('a revocation after a reload that stops trusting the actor\'s iss', async (t) => {
  const w = await world();
  w.up.handler = eventStream(t);
  const patch = (r: Record<string, any>) => {
    r.consumers.unknown = 'allow';
    r.credentials = { taskBindingAt: 'never' };
    r.delegation = { mode: 'off' };
    r.revocation = { mode: 'enforce' };
  };
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); trustAlso(r, 'https://third.test.local'); patch(r); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ sub: HUMAN, claims: { act: { sub: X, iss: OTHER } } });
  const stream = await readStream(t, `${dg.url}/items/1`, tok);
  // OTHER is trusted no longer (two issuers stay, so unregistered keys stay pairs).
  await dg.dg.swap(loadRules(writeRules(w.rules((r) => { trustAlso(r, 'https://third.test.local'); patch(r); }))));
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: JSON.stringify([ISSUER, X]), reason: 'compromised' }) });
  t.equal(made.status, 201); await made.text();
  w.up.handler = undefined;
  const fresh = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  t.comment(`a new request with the same token -> ${fresh.status}`); await fresh.text();
  t.equal(fresh.status, 401, 'a new request is refused');
  t.ok(await until(() => stream.state.ended, 2_500), 'the open stream of the same token is cut, as "a revocation cuts a stream off as it refuses a request"');
  await stream.stop();
});
