// ClientRead on its own (proxy/forward/client-read.ts), with a real EventEmitter for the client's
// side and a controller that counts: the paths its end-to-end tests (streaming.test.ts) cannot
// force, undici handing over chunks while the answer is paused.

import t from 'tap';
import { EventEmitter } from 'node:events';
import { ClientRead } from '../../proxy/forward/client-read.ts';

const counting = () => {
  const c = { pauses: 0, resumes: 0, pause() { c.pauses++; }, resume() { c.resumes++; } };
  return c;
};

t.test('a wait while waiting only pauses again: one drain listener, one resume, and no cut after stop()', async (t) => {
  const to = new EventEmitter();
  const controller = counting();
  let cuts = 0;
  const reads = new ClientRead(to, 200, () => { cuts++; });
  // undici's parser resumes across a pause when the upstream's connection ends, and hands
  // over what it had read: each chunk is a write the client does not take, and a wait.
  reads.wait(controller as never);
  reads.wait(controller as never);
  t.equal(controller.pauses, 2, 'paused again');
  t.equal(to.listenerCount('drain'), 1, 'one listener (before: one per wait)');
  to.emit('drain');
  t.equal(controller.resumes, 1, 'one drain, one resume (before: two)');
  reads.wait(controller as never);
  reads.stop();
  t.equal(to.listenerCount('drain'), 0, 'none left after stop() (before: one)');
  await new Promise((r) => setTimeout(r, 400));
  t.equal(cuts, 0, 'no timer outlives stop() (before: the first wait\'s cut ran after the answer ended)');
  t.notOk(reads.slow);
});

t.test('the waits of one answer add up: cut once they reach the limit, and only then', async (t) => {
  const to = new EventEmitter();
  const controller = counting();
  let cuts = 0;
  const reads = new ClientRead(to, 300, () => { cuts++; });
  reads.wait(controller as never);
  await new Promise((r) => setTimeout(r, 200));
  to.emit('drain');
  reads.wait(controller as never);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(cuts, 0, '250 ms in all: not yet');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(cuts, 1, 'cut once the waits add up to 300 ms');
  t.ok(reads.slow, 'and it says so');
  reads.stop();
});
