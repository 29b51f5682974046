// Builds of driftguard side by side: the same rules, the same wrk mix, interleaved round by
// round, so that a change's cost shows through the machine's noise. Built for finding which
// commit moved a figure of the main benchmark (bisect with it: its medians of several rounds
// separate a 5% change that one round of `make bench` does not).
//
//   node test/bench/ab.ts [--mode core|full] [--rounds N] [--seconds S] [--profile DIR] REV REV...
//
// Each REV (a commit, a branch, or a directory holding a checkout) is checked out in a
// temporary worktree, built as the image builds it (tsconfig.build.json) and run as
// `node proxy/cli.js run`. --mode core: every lifecycle feature, span export and decision log
// off, as the main benchmark's driftguard-core; full: tracing to a local receiver and the
// decision log on, as its driftguard. Prints each round and, per build, the median req/s at 32
// connections and µs of CPU per request. A benchmark, not a test: nothing here is timed in CI.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { stringify } from 'yaml';
import { cpuSeconds, spawnNode, type Child } from './proc.ts';
import { jwksServer, otlpReceiver } from './receivers.ts';
import { mintToken, requestMix, rulesFor, signingKey, wrkLines } from './scenario.ts';
import { wrk } from './wrk.ts';
import { median } from './report.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const { values: args, positionals: revs } = parseArgs({
  allowPositionals: true,
  options: {
    mode: { type: 'string', default: 'core' },
    rounds: { type: 'string', default: '4' },
    seconds: { type: 'string', default: '6' },
    profile: { type: 'string' },
  },
});
if (revs.length === 0 || !['core', 'full'].includes(args.mode!)) {
  process.stderr.write('usage: node test/bench/ab.ts [--mode core|full] [--rounds N] [--seconds S] [--profile DIR] REV REV...\n');
  process.exit(2);
}

/** The main benchmark's driftguard-core: the seventeen checks alone. */
const CORE = {
  telemetry: { traces: { exporter: 'none' }, decisionLog: { output: 'none' }, recent: { size: 0 } },
  credentials: { mode: 'off' }, revocation: { mode: 'off' }, delegation: { mode: 'off' },
  monitors: { kinds: [], maxBodyBytes: 0, retryStorm: { mode: 'off' }, idempotency: { mode: 'off' }, traversal: { mode: 'off' }, quarantine: { mode: 'off' } },
};

function freePort(): Promise<number> {
  return new Promise((res) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); }); });
}

/** A checkout of `rev` built as the image builds it; returns the build's cli.js. */
function build(rev: string, work: string, i: number): string {
  let tree = resolve(rev);
  if (!existsSync(join(tree, 'proxy'))) {
    tree = join(work, `tree-${i}`);
    execFileSync('git', ['worktree', 'add', '-f', '--detach', tree, rev], { cwd: ROOT, stdio: 'pipe' });
    // tsc reads the types of the dependencies: this checkout's, which every build here runs on.
    symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'));
  }
  const out = join(work, `build-${i}`);
  execFileSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', join(tree, 'tsconfig.build.json'), '--outDir', out], { cwd: tree, stdio: 'inherit' });
  // The rules' schema where the build looks for it, and this checkout's dependencies.
  rmSync(join(out, 'rules'), { recursive: true, force: true });
  symlinkSync(join(tree, 'rules'), join(out, 'rules'));
  symlinkSync(join(tree, 'package.json'), join(out, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'));
  return join(out, 'proxy/cli.js');
}


async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'driftguard-ab-'));
  const keys = [signingKey('bench-es256-a'), signingKey('bench-es256-b')];
  const jwks = await jwksServer({ keys: keys.map((k) => k.publicJwk) });
  const otlp = await otlpReceiver();
  const children: Child[] = [];
  try {
    const upstream = await spawnNode('upstream', [join(ROOT, 'test/bench/targets/upstream.ts')], { printsPort: true });
    children.push(upstream);
    const targets: { name: string; url: string; pid: number; rps: number[]; us: number[] }[] = [];
    for (const [i, rev] of revs.entries()) {
      const cli = build(rev, work, i);
      const [port, adminPort] = [await freePort(), await freePort()];
      const file = join(work, `rules-${i}`, 'rules.yaml');
      mkdirSync(dirname(file));
      const telemetry = { traces: { exporter: 'otlp', protocol: 'http/protobuf', endpoint: otlp.url, serviceName: 'driftguard-ab', sampler: 'parentbased_always_on' }, decisionLog: { output: 'stdout', allowSampleRate: 1 } };
      writeFileSync(file, stringify(rulesFor({ upstream: `http://127.0.0.1:${upstream.port}`, jwksUrl: jwks.url, listen: `127.0.0.1:${port}`, admin: `127.0.0.1:${adminPort}`, extra: args.mode === 'core' ? CORE : { telemetry } })));
      const prof = args.profile ? `--cpu-prof --cpu-prof-dir=${join(resolve(args.profile), String(i))}` : '';
      const child = await spawnNode(rev, [cli, 'run', '--config', file], { env: { ...process.env, NODE_OPTIONS: prof }, logFile: join(work, `log-${i}`) });
      children.push(child);
      let ready = false;
      for (let n = 0; n < 300 && !ready; n++) {
        try { const r = await request(`http://127.0.0.1:${adminPort}/readyz`); await r.body.dump(); ready = r.statusCode === 200; } catch { /* not yet */ }
        if (!ready) await new Promise((r) => setTimeout(r, 100));
      }
      if (!ready) throw new Error(`${rev} did not become ready within 30 s (its log: ${join(work, `log-${i}`)})`);
      targets.push({ name: rev, url: `http://127.0.0.1:${port}`, pid: child.pid!, rps: [], us: [] });
    }
    const nowS = Math.floor(Date.now() / 1000);
    const tokens = Array.from({ length: 50 }, (_, c) => mintToken(keys[c % 2]!, c, nowS));
    const mixFile = join(work, 'mix.txt');
    writeFileSync(mixFile, wrkLines(requestMix(10, (c) => tokens[c]!)));
    for (const t of targets) await wrk({ url: t.url, requestsFile: mixFile, connections: 8, seconds: 2 });
    for (let r = 0; r < Number(args.rounds); r++) {
      // The order turns each round: the second of two runs in a row has a warmer machine.
      for (const t of r % 2 ? [...targets].reverse() : targets) {
        const before = cpuSeconds(t.pid);
        const w = await wrk({ url: t.url, requestsFile: mixFile, connections: 32, seconds: Number(args.seconds) });
        const us = (cpuSeconds(t.pid) - before) / w.requests * 1e6;
        t.rps.push(Math.round(w.requests / (w.durationUs / 1e6)));
        t.us.push(Math.round(us));
        process.stdout.write(`round ${r + 1}: ${t.name} ${t.rps.at(-1)} req/s, ${t.us.at(-1)} µs of CPU a request\n`);
      }
    }
    for (const t of targets) process.stdout.write(`median ${t.name}: ${median(t.rps)} req/s, ${median(t.us)} µs of CPU a request (rounds ${t.rps.join(' ')}; ${t.us.join(' ')})\n`);
  } finally {
    for (const c of children.reverse()) await c.stop();
    await jwks.close();
    await otlp.close();
    for (const [i] of revs.entries()) {
      if (!existsSync(join(work, `tree-${i}`))) continue;
      try { execFileSync('git', ['worktree', 'remove', '--force', join(work, `tree-${i}`)], { cwd: ROOT, stdio: 'ignore' }); } catch { /* left for git worktree prune */ }
    }
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
