// The span export thread when the OS gives no thread (a pod's pids limit, RLIMIT_NPROC): the
// real `driftguard run`, as nobody, with as many threads allowed as it runs with before its
// first span. Before: `new Worker()` threw ERR_WORKER_INIT_FAILED from the post timer and the
// sidecar died after answering its first sampled request. Needs root (RLIMIT_NPROC binds only
// other users), `setpriv` and `prlimit` (util-linux); skipped, and said so, where they are not.

import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, chmodSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks } from '../support/keys.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';

const CLI = fileURLToPath(new URL('../../proxy/cli.ts', import.meta.url));
const AS_NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
/** Root, the tools, and a checkout nobody may read (a clone under a 0700 directory is not). */
const can = process.getuid?.() === 0 && spawnSync('prlimit', ['--version']).status === 0
  && spawnSync('setpriv', [...AS_NOBODY, process.execPath, '-e', `require('node:fs').accessSync(${JSON.stringify(CLI)})`]).status === 0;

/** driftguard run as nobody (setpriv execs node in place: the pid is node's), with at most `nproc` threads. */
async function start(file: string, nproc?: number) {
  const args = [...AS_NOBODY, ...(nproc ? ['prlimit', `--nproc=${nproc}`] : []), process.execPath, CLI, 'run', '--config', file];
  // The collector's port refuses: the thread's start is what is tested, not an export.
  const child = spawn('setpriv', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' } });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
  child.stdout!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  for (let i = 0; i < 200 && !/driftguard listening/.test(err) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  const line = err.split('\n').find((l) => l.includes('driftguard listening'));
  return { child, exited, err: () => err, listen: line ? (JSON.parse(line.slice(line.indexOf('{'))) as { listen: string }).listen : undefined };
}

t.test('no thread left for the span export thread: the sidecar answers on, and says so', { skip: can ? false : 'needs root, setpriv and prlimit, and a checkout the user nobody can read' }, async (t) => {
  const up = await upstream();
  const keys = await jwksServer(jwks(await testKey('ES256')));
  t.teardown(async () => { await up.close(); await keys.close(); });
  const file = writeRules(baseRules(up.origin, keys.url, (r) => { r.telemetry = { decisionLog: { output: 'none' } }; }));
  chmodSync(dirname(file), 0o755);
  chmodSync(file, 0o644);
  // How many threads it runs with before its first span.
  const probe = await start(file);
  t.ok(probe.listen, 'started as nobody');
  await new Promise((r) => setTimeout(r, 500));
  const threads = Number(/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${probe.child.pid}/status`, 'utf8'))![1]);
  probe.child.kill('SIGKILL');
  await probe.exited;
  const dg = await start(file, threads);
  t.teardown(() => { dg.child.kill('SIGKILL'); });
  if (!dg.listen) { t.fail(`did not start under the limit: ${dg.err()}`); return; }
  const first = await fetch(`http://${dg.listen}/status`);
  t.equal(first.status, 200, 'the first request is answered');
  const state = await Promise.race([dg.exited.then((c) => `exited ${c}`), new Promise((r) => setTimeout(() => r('running'), 2_000))]);
  t.equal(state, 'running', 'and the sidecar runs on after its first span');
  t.equal((await fetch(`http://${dg.listen}/status`)).status, 200, 'answering');
  t.match(dg.err(), /the span export thread could not be started \(ERR_WORKER_INIT_FAILED\)/, 'the warning says why spans are dropped');
  t.notMatch(dg.err(), /^\s+at /m, 'no stack trace');
});
