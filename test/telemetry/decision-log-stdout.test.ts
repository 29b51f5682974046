// The decision log on stdout, as a pod runs it: stdout is a pipe that the container runtime
// reads. When that reader stops reading (a stalled log shipper, a full disk under it), the
// pipe fills; driftguard must go on answering, hold at most maxBufferBytes of lines, and
// drop and count the rest, as it does for a file. A real subprocess with a real pipe.
// (It passes on the code it was written against: Node writes a full pipe asynchronously, and
// the log waits for 'drain'. It guards that: with fs.writeSync(1) in place of the stream, a
// write to the full pipe failed (EAGAIN), and its lines were lost without being counted.)

import t from 'tap';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const up = await upstream();
const keys = await jwksServer(jwks(await testKey('ES256')));
const dg = await runDriftguard(writeRules(baseRules(up.origin, keys.url, (r) => {
  r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'stdout', allowSampleRate: 1, maxBufferBytes: 65_536 } };
})));
t.teardown(async () => { dg.kill(); await up.close(); await keys.close(); });

async function dropped(): Promise<number> {
  const text = await (await fetch(dg.admin + '/metrics')).text();
  return Number(/^driftguard_decision_log_dropped_total (\d+)/m.exec(text)?.[1]);
}

t.test('a reader that stops reading stdout: every request is still answered; lines beyond the bound are dropped and counted', async (t) => {
  const stdout = dg.child.stdout!;
  stdout.pause();
  const chunks: Buffer[] = [];
  stdout.on('data', (c: Buffer) => chunks.push(c));
  // 3,000 decisions of about 500 bytes: 1.5 MB, far more than the pipe (64 KiB), what this
  // reader buffers before it stops reading (64 KiB) and the bound (64 KiB) can hold.
  const deadline = AbortSignal.timeout(30_000);
  let answered = 0;
  await Promise.all(Array.from({ length: 12 }, async () => {
    for (let i = 0; i < 250; i++) {
      const res = await fetch(dg.url + '/status', { signal: deadline });
      await res.arrayBuffer();
      if (res.status === 200) answered++;
    }
  }));
  t.equal(answered, 3000, 'every request answered while the pipe is full');
  const lost = await dropped();
  t.ok(lost > 0, `lines dropped and counted: ${lost}`);

  stdout.resume();
  let lines: string[] = [];
  for (let i = 0; i < 100; i++) {
    lines = Buffer.concat(chunks).toString('utf8').split('\n').filter(Boolean);
    if (lines.length + lost >= 3000) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.equal(lines.length + lost, 3000, 'every decision written or counted as dropped');
  t.ok(lines.every((l) => JSON.parse(l).msg === 'decision'), 'whole lines, each a decision');
});
