// composeObservers (proxy/observe.ts): the telemetry and lifecycle features each observe every
// request. One that throws must not keep the others from hearing of it: a span export that
// failed in end() skipped the lifecycle's end(), and its idempotency key stayed in flight.

import t from 'tap';
import { composeObservers, noopObserver, type Observer } from '../../proxy/observe.ts';
import type { RequestContext } from '../../proxy/pipeline/types.ts';

t.test('every observer hears each step, whatever another one threw; the first error is thrown after', async (t) => {
  const heard: string[] = [];
  const failing: Observer = {
    begin: (ctx) => ({
      ...noopObserver.begin(ctx),
      forwarded() { throw new Error('first'); },
      end() { throw new Error('export thread gone'); },
    }),
  };
  const second: Observer = { begin: (ctx) => ({ ...noopObserver.begin(ctx), forwarded() { throw new Error('second'); } }) };
  const listening: Observer = {
    begin: (ctx) => ({ ...noopObserver.begin(ctx), forwarded() { heard.push('forwarded'); }, end(status) { heard.push(`end ${status}`); } }),
  };
  const observation = composeObservers([failing, second, listening]).begin({} as RequestContext);
  t.throws(() => observation.forwarded({ status: 200 }), { message: 'first' }, 'the first error, not the last');
  t.throws(() => observation.end(200), { message: 'export thread gone' });
  t.same(heard, ['forwarded', 'end 200'], 'the last observer heard both (before: neither)');
});

t.test('an observer whose begin throws leaves the others their observation', async (t) => {
  const heard: string[] = [];
  const failing: Observer = { begin: () => { throw new Error('sampler failed'); } };
  const listening: Observer = { begin: (ctx) => ({ ...noopObserver.begin(ctx), end(status) { heard.push(`end ${status}`); } }) };
  const observation = composeObservers([failing, listening]).begin({} as RequestContext);
  observation.end(200);
  t.same(heard, ['end 200'], 'the lifecycle\'s end still heard (before: the whole observation fell back to none)');
});
