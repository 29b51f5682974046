// The decider's own fail-closed rules, over checks that misbehave as a defect in one could:
// a denial for internal-error, or a result that is no denial at all, is an enforced 500
// internal-error in audit mode too, never a would-deny that forwards the request. The checks
// here are stand-ins (no real check returns such a value: the types forbid it); the requests
// through real checks are in fail-closed.test.ts.

import t from 'tap';
import { decider } from '../../proxy/pipeline/decide.ts';
import type { Check, RequestContext } from '../../proxy/pipeline/types.ts';

const ctx = () => ({ warnings: [], checks: [] }) as unknown as RequestContext;
const returning = (value: unknown): Check => ({ name: 'scopes', run: () => value as never });

for (const [what, value] of [
  ['a denial for internal-error', { reason: 'internal-error', detail: 'x' }],
  ['true', true],
  ['an empty object', {}],
  ['a reason nobody can look up', { reason: 'bogus', detail: 'x' }],
  ['a denial without a detail', { reason: 'stale-contract' }],
  ['a promise of a string', Promise.resolve('deny')],
] as const) {
  t.test(`a check returning ${what}: an enforced internal-error, in audit mode too`, async (t) => {
    for (const mode of ['audit', 'enforce'] as const) {
      const c = ctx();
      const d = await decider([returning(value)], mode)(c);
      t.match(d, { decision: 'deny', enforced: true, reason: 'internal-error' }, mode);
      if (what !== 'a denial for internal-error') t.equal(d.detail, 'the scopes check failed', 'no detail of the check\'s');
      t.same(c.checks, [{ check: 'scopes', outcome: 'deny', reason: 'internal-error' }]);
    }
  });
}

t.test('a real denial is still a would-deny in audit mode', async (t) => {
  const d = await decider([returning({ reason: 'stale-contract', detail: 'stale' })], 'audit')(ctx());
  t.match(d, { decision: 'deny', enforced: false, reason: 'stale-contract' });
});

t.test('no denial continues', async (t) => {
  for (const none of [undefined, null, Promise.resolve(undefined)]) {
    t.match(await decider([returning(none)], 'enforce')(ctx()), { decision: 'allow', reason: 'allowed' });
  }
});
