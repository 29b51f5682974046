// `make bench`: driftguard side by side with its floor, in one run, on one machine.
//
// Targets, each driven by the same wrk and the same request mix, interleaved round by round
// so the machine's noise falls on all of them alike:
//   direct              the upstream itself (the baseline for "added" latency)
//   bare                a bare undici passthrough (the floor a Node proxy cannot beat)
//   bare-limited        the same under the chart's NODE_OPTIONS (the memory floor in that container)
//   driftguard          `node proxy/cli.js run` as the image runs it (the build's JavaScript),
//                       with realistic rules, tracing and decision log
//   driftguard-limited  the same under the chart's limits (its sidecar.nodeOptions)
//   driftguard-core     the same rules with tracing, decision log and the lifecycle features
//                       off: not a budget figure, it shows what those features cost
// plus the cold path (a never-seen token per request) against the raw jose verify rate.
// Prints a table and writes test/bench/results/latest.json. Options:
//   --quick          one short round (under a minute): checks the harness, not the figures
//   --rounds N       interleaved rounds (default 3)
//   --out FILE       where to write the JSON (default test/bench/results/latest.json; quick.json with --quick)
//   --profile DIR    run driftguard under --cpu-prof and leave the profiles in DIR/<target>/,
//                    one per thread (the request thread's is the larger)
//   --note TEXT      recorded in the JSON (e.g. what else the machine was doing)
//   --keep           keep the working directory (rules, logs, request files) in /tmp
//   --limited-node-options=TEXT   NODE_OPTIONS of driftguard-limited instead of the chart's

import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, rmSync } from 'node:fs';
import { stripTypeScriptTypes } from 'node:module';
import { tmpdir, cpus, totalmem, loadavg, release } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { stringify, parse } from 'yaml';
import { request } from 'undici';
import { spawnNode, runNodeJson, cpuSeconds, memory, peakSampler, type Child } from './proc.ts';
import { countLogLines } from './log-lines.ts';
import { wrk, wrkVersion, type WrkResult } from './wrk.ts';
import { jwksServer, otlpReceiver } from './receivers.ts';
import { signingKey, mintToken, rulesFor, requestMix, wrkLines, ISSUER, AUDIENCE, FIRST_STALE, PLACEHOLDER, type RequestSpec } from './scenario.ts';
import { summarise, printTable, markdown, invalidRun, type Samples } from './report.ts';
import { imageLayout } from '../support/image.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    out: { type: 'string' },
    profile: { type: 'string' },
    note: { type: 'string' },
    'limited-node-options': { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

/** Seconds per measurement, connections and rates. */
const S = args.quick
  ? { rounds: 1, warm: 1, throughput: 2, one: 1, rate: 2, cold: 1, verify: 1 }
  : { rounds: 3, warm: 3, throughput: 10, one: 6, rate: 6, cold: 5, verify: 3 };
if (args.rounds) S.rounds = Number(args.rounds);
const CONNECTIONS = 32;
const RATE = 2000;
const RATE_CONNECTIONS = 10;
/** The sidecar's NODE_OPTIONS as the chart sets them (one source of truth), else the issue's. */
const HEAP_LIMIT = args['limited-node-options'] ?? (() => {
  try {
    const values = parse(readFileSync(join(ROOT, 'charts/driftguard/values.yaml'), 'utf8')) as { sidecar?: { nodeOptions?: string } };
    return values.sidecar?.nodeOptions ?? '--max-old-space-size=112 --max-semi-space-size=4';
  } catch { return '--max-old-space-size=112 --max-semi-space-size=4'; }
})();
/** The budget's container size (issue 4); the chart's default limit is 320Mi, above what is measured. */
const CONTAINER_LIMIT_MIB = 128;

function log(msg: string): void { process.stderr.write(`bench: ${msg}\n`); }

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
  });
}

async function waitReady(admin: string, name: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    try {
      const r = await request(`${admin}/readyz`);
      await r.body.dump();
      if (r.statusCode === 200) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} did not become ready within 30s`);
}

/**
 * The refusals the rules call for: a stale consumer's call to an operation changed since its
 * contract (409 stale-contract), and once the quarantine monitor has seen twenty of those in a
 * minute, the consumer refused outright (403 consumer-quarantined). A 401, 429 or 503 is some
 * other, usually cheaper, path.
 */
const DENIALS: Record<string, number> = { 'stale-contract': 409, 'consumer-quarantined': 403 };

/** Send one block of the mix and check every answer is what the rules say it must be. */
async function checkMix(url: string, requests: readonly RequestSpec[], name: string): Promise<Record<string, number>> {
  const seen: Record<string, number> = { allowed: 0, warned: 0, denied: 0 };
  let n = 0;
  for (const r of requests) {
    const unique = `chk${Date.now() % 1e6}${n++}`;
    const res = await request(url + r.path.replaceAll(PLACEHOLDER, unique), {
      method: r.method as 'GET',
      headers: {
        authorization: `Bearer ${r.token}`, accept: 'application/json',
        ...(r.body ? { 'content-type': 'application/json' } : {}),
        ...(r.idempotent ? { 'idempotency-key': `bench-${unique}` } : {}),
      },
      ...(r.body ? { body: r.body.replaceAll(PLACEHOLDER, unique) } : {}),
    });
    const text = await res.body.text();
    const got = res.statusCode >= 400 ? 'denied' : res.statusCode >= 200 && res.statusCode < 300 ? (res.headers['driftguard-warning'] ? 'warned' : 'allowed') : 'other';
    let reason: unknown;
    if (got === 'denied') { try { reason = (JSON.parse(text) as { reason?: unknown }).reason; } catch { /* not a problem body */ } }
    const wrongDenial = got === 'denied' && (typeof reason !== 'string' || DENIALS[reason] !== res.statusCode);
    if (got !== r.expect || wrongDenial) {
      const why = res.statusCode >= 400 ? ` ${text}` : '';
      throw new Error(`${name}: ${r.method} ${r.path} (${r.operation}) was ${got} (${res.statusCode}${typeof reason === 'string' ? ` ${reason}` : ''}), expected ${r.expect}${r.expect === 'denied' ? ` (${Object.entries(DENIALS).map(([k, v]) => `${v} ${k}`).join(' or ')})` : ''}${why}`);
    }
    seen[got]!++;
  }
  return seen;
}

async function main(): Promise<void> {
  const version = wrkVersion();
  if (!version) throw new Error('wrk is not installed: run `make bench` (it installs wrk from Debian), or apt-get install -y wrk');
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-bench-'));
  const started = new Date();
  const loadStart = loadavg();
  log(`working in ${dir}; wrk ${version}; node ${process.version}; load ${loadStart.map((l) => l.toFixed(2)).join(' ')}`);

  // --- the world: keys, JWKS over HTTP, OTLP receiver, upstream, bare passthrough ---
  const keys = [signingKey('bench-es256-a'), signingKey('bench-es256-b')];
  const jwks = { keys: keys.map((k) => k.publicJwk) };
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(jwks));
  const jwksHttp = await jwksServer(jwks);
  const otlp = await otlpReceiver();
  const children: Child[] = [];
  const stopAll = async () => { for (const c of children.reverse()) await c.stop(); await jwksHttp.close(); await otlp.close(); };
  // Interrupted (Ctrl-C, or a timeout's SIGTERM): stop the targets, or they outlive the harness.
  process.on('SIGINT', () => { void stopAll().then(() => process.exit(130)); });
  process.on('SIGTERM', () => { void stopAll().then(() => process.exit(143)); });

  try {
    // driftguard as the image runs it: the build's JavaScript, so no type stripper is loaded
    // (about 16 MiB). The floor and the upstream too, beside it (undici from its node_modules):
    // run from their .ts the floor carried the stripper, and its memory figures with it.
    const app = imageLayout(dir);
    const cli = join(app, 'proxy/cli.js');
    const asJavaScript = (name: string): string => {
      const file = join(app, 'bench', `${name}.mjs`);
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, stripTypeScriptTypes(readFileSync(join(HERE, 'targets', `${name}.ts`), 'utf8')));
      return file;
    };
    const [upstreamJs, bareJs] = [asJavaScript('upstream'), asJavaScript('bare')];
    const upstream = await spawnNode('upstream', [upstreamJs], { printsPort: true });
    children.push(upstream);
    const upstreamUrl = `http://127.0.0.1:${upstream.port}`;
    const bare = await spawnNode('bare', [bareJs, upstreamUrl], { printsPort: true });
    children.push(bare);
    // The floor under the chart's limits too: what any Node proxy holds in that container.
    const bareLimited = await spawnNode('bare-limited', [bareJs, upstreamUrl], { printsPort: true, env: { ...process.env, NODE_OPTIONS: HEAP_LIMIT } });
    children.push(bareLimited);

    const otelEnv = {
      OTEL_SERVICE_NAME: 'driftguard-bench',
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_METRICS_EXPORTER: 'otlp',
      OTEL_LOGS_EXPORTER: 'none',
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_TRACES_SAMPLER: 'parentbased_always_on',
    };
    const telemetry = telemetrySection(otlp.url);
    const startDriftguard = async (name: string, nodeOptions: string, features = true): Promise<{ child: Child; url: string; logFile: string }> => {
      const [port, adminPort] = [await freePort(), await freePort()];
      // Rules alone in their directory: the reloader watches the rules file's directory.
      mkdirSync(join(dir, name));
      const file = join(dir, name, 'rules.yaml');
      writeFileSync(file, stringify(rulesFor({ upstream: upstreamUrl, jwksUrl: jwksHttp.url, listen: `127.0.0.1:${port}`, admin: `127.0.0.1:${adminPort}`, extra: features ? (telemetry ? { telemetry } : {}) : { ...(telemetry ? { telemetry: CORE_TELEMETRY } : {}), ...CORE_LIFECYCLE } })));
      const logFile = join(dir, `${name}.log`);
      // Through NODE_OPTIONS, so that the export thread is profiled too (a worker takes no
      // command-line flags of the process's): one profile per thread in DIR/<target>/.
      const prof = args.profile ? ` --cpu-prof --cpu-prof-dir=${join(resolve(args.profile), name)}` : '';
      const child = await spawnNode(name, [cli, 'run', '--config', file, '--grace', '2s'], {
        env: { ...process.env, ...otelEnv, NODE_OPTIONS: (nodeOptions + prof).trim() }, logFile,
      });
      children.push(child);
      await waitReady(`http://127.0.0.1:${adminPort}`, name);
      return { child, url: `http://127.0.0.1:${port}`, logFile };
    };
    const dg = await startDriftguard('driftguard', '');
    const dgLimited = await startDriftguard('driftguard-limited', HEAP_LIMIT);
    const dgCore = await startDriftguard('driftguard-core', '', false);

    // --- the traffic: 50 consumers' tokens, the mix as wrk lines ---
    const nowS = Math.floor(Date.now() / 1000);
    const tokens = Array.from({ length: 50 }, (_, i) => mintToken(keys[i % 2]!, i, nowS));
    const mix = requestMix(10, (c) => tokens[c]!);
    const mixFile = join(dir, 'mix.txt');
    writeFileSync(mixFile, wrkLines(mix));
    const oneBlock = mix.slice(0, 100);
    const mixCheck = {
      driftguard: await checkMix(dg.url, oneBlock, 'driftguard'),
      'driftguard-limited': await checkMix(dgLimited.url, oneBlock, 'driftguard-limited'),
      'driftguard-core': await checkMix(dgCore.url, oneBlock, 'driftguard-core'),
    };
    log(`mix checked: ${JSON.stringify(mixCheck.driftguard)} of 100`);

    const targets: { name: string; url: string; pid?: number }[] = [
      { name: 'direct', url: upstreamUrl, pid: upstream.pid },
      { name: 'bare', url: `http://127.0.0.1:${bare.port}`, pid: bare.pid },
      { name: 'bare-limited', url: `http://127.0.0.1:${bareLimited.port}`, pid: bareLimited.pid },
      { name: 'driftguard', url: dg.url, pid: dg.child.pid },
      { name: 'driftguard-limited', url: dgLimited.url, pid: dgLimited.child.pid },
      { name: 'driftguard-core', url: dgCore.url, pid: dgCore.child.pid },
    ];
    const sampler = peakSampler(Object.fromEntries(targets.filter((t) => t.name !== 'direct').map((t) => [t.name, t.pid!])));
    const samples: Samples = {};
    const sample = (target: string, metric: string, value: number) => {
      ((samples[target] ??= {})[metric] ??= []).push(value);
    };
    // The mix's refusals, which only driftguard makes: the upstream and the floor answer all.
    const refusedShare = mix.filter((r) => r.expect === 'denied').length / mix.length;
    const measured = async (t: { name: string; pid?: number }, connections: number, run: () => Promise<WrkResult>) => {
      const cpu0 = t.pid ? cpuSeconds(t.pid) : 0;
      const r = await run();
      const cpu = t.pid ? cpuSeconds(t.pid) - cpu0 : 0;
      const seconds = r.durationUs / 1e6;
      // A run whose answers are not the target's work (errors, stalls, refusals the rules do not
      // call for) would be counted as fast: it stops the benchmark, naming the target and why.
      const invalid = invalidRun(r, connections, t.name.startsWith('driftguard') ? refusedShare : 0);
      if (invalid) throw new Error(`${t.name} at ${connections} connection(s): ${invalid}; its figures would not be its work`);
      return { r, rps: r.requests / seconds, cpuPer1000: r.requests ? (cpu / r.requests) * 1000 : NaN, denied: r.errors.status / r.requests };
    };

    // Warm every target (JIT, keep-alive pools, the verified-token cache) before measuring.
    for (const t of targets) await wrk({ url: t.url, requestsFile: mixFile, connections: CONNECTIONS, seconds: S.warm });

    // Cold-path tokens: a fresh set for each run, never sent before.
    const coldFile = (name: string, count: number): string => {
      const now = Math.floor(Date.now() / 1000);
      const file = join(dir, `cold-${name}.txt`);
      writeFileSync(file, wrkLines(requestMix(Math.ceil(count / 100), (c) => mintToken(keys[c % 2]!, c, now))));
      return file;
    };

    for (let round = 0; round < S.rounds; round++) {
      // Rotated each round, and reversed every other one: a rotation alone keeps every target
      // right after the same neighbour (the floor always after the direct run).
      const rotated = targets.map((_, i) => targets[(i + round) % targets.length]!);
      const order = round % 2 === 0 ? rotated : rotated.reverse();
      log(`round ${round + 1}/${S.rounds}: throughput at ${CONNECTIONS} connections`);
      for (const t of order) {
        const m = await measured(t, CONNECTIONS, () => wrk({ url: t.url, requestsFile: mixFile, connections: CONNECTIONS, seconds: S.throughput }));
        sample(t.name, 'throughputRps', m.rps);
        sample(t.name, 'cpuSecondsPer1000AtThroughput', m.cpuPer1000);
        sample(t.name, 'deniedShare', m.denied);
        sample(t.name, 'replays', m.r.wraps);
      }
      log(`round ${round + 1}/${S.rounds}: latency at 1 connection`);
      for (const t of order) {
        const m = await measured(t, 1, () => wrk({ url: t.url, requestsFile: mixFile, connections: 1, seconds: S.one, raw: true }));
        // Each request's own time: at one connection wrk's correction for coordinated omission
        // invents more samples for a faster target (README, What is measured). Its corrected
        // p99 is kept beside, for comparison with earlier runs.
        if (!m.r.rawUs) throw new Error(`${t.name}: wrk gave no per-request times (its LuaJIT has no ffi?)`);
        sample(t.name, 'oneConnectionP50Us', m.r.rawUs.p50);
        sample(t.name, 'oneConnectionP90Us', m.r.rawUs.p90);
        sample(t.name, 'oneConnectionP99Us', m.r.rawUs.p99);
        sample(t.name, 'oneConnectionCorrectedP99Us', m.r.latencyUs.p99);
      }
      log(`round ${round + 1}/${S.rounds}: latency at ${RATE} req/s`);
      for (const t of order) {
        const m = await measured(t, RATE_CONNECTIONS, () => wrk({ url: t.url, requestsFile: mixFile, connections: RATE_CONNECTIONS, seconds: S.rate, delayMs: (RATE_CONNECTIONS * 1000) / RATE }));
        sample(t.name, 'fixedRateRps', m.rps);
        sample(t.name, 'fixedRateP50Us', m.r.latencyUs.p50);
        sample(t.name, 'fixedRateP90Us', m.r.latencyUs.p90);
        sample(t.name, 'fixedRateP99Us', m.r.latencyUs.p99);
        sample(t.name, 'cpuSecondsPer1000AtFixedRate', m.cpuPer1000);
      }

      log(`round ${round + 1}/${S.rounds}: cold path (a never-seen token per request)`);
      const verifyTokens = join(dir, 'verify-tokens.txt');
      writeFileSync(verifyTokens, Array.from({ length: 2000 }, (_, i) => mintToken(keys[i % 2]!, i % FIRST_STALE, Math.floor(Date.now() / 1000))).join('\n'));
      const raw = await runNodeJson<{ rate: number }>([join(HERE, 'targets/verify-rate.ts'), join(dir, 'jwks.json'), verifyTokens, String(S.verify), ISSUER, AUDIENCE]);
      sample('jose', 'verifyRate', raw.rate);
      for (const t of targets.filter((x) => x.name === 'driftguard' || x.name === 'driftguard-limited')) {
        // Enough tokens that none repeats even if driftguard matched the raw rate.
        const file = coldFile(`${t.name}-${round}`, Math.ceil(raw.rate * S.cold * 1.3) + 500);
        const m = await measured(t, CONNECTIONS, () => wrk({ url: t.url, requestsFile: file, connections: CONNECTIONS, seconds: S.cold }));
        if (m.r.wraps > 0) log(`${t.name}: cold tokens ran out (replayed ${m.r.wraps}x); the figure is optimistic`);
        sample(t.name, 'coldRps', m.rps);
        sample(t.name, 'coldReplays', m.r.wraps);
        sample(t.name, 'cpuSecondsPer1000Cold', m.cpuPer1000);
      }
    }

    sampler.stop();
    const peak: Record<string, number> = {};
    for (const t of targets) if (t.pid && t.name !== 'direct') peak[t.name] = memory(t.pid).peakRssMiB;
    const peakAnon = sampler.peaks();
    const loadEnd = loadavg();
    await stopAll();
    const decisionLog = { driftguard: countLogLines(dg.logFile), 'driftguard-limited': countLogLines(dgLimited.logFile), 'driftguard-core': countLogLines(dgCore.logFile) };

    const cpu = cpus();
    const result = summarise(samples, peak, peakAnon, {
      schema: 'driftguard-bench/1',
      ...gitState(),
      generatedAt: started.toISOString(),
      quick: args.quick ?? false,
      ...(args.note ? { note: args.note } : {}),
      machine: {
        cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30),
        kernel: release(), node: process.version, wrk: version,
        loadAverageAtStart: loadStart.map((l) => Number(l.toFixed(2))), loadAverageAtEnd: loadEnd.map((l) => Number(l.toFixed(2))),
      },
      settings: {
        rounds: S.rounds, seconds: { warm: S.warm, throughput: S.throughput, oneConnection: S.one, fixedRate: S.rate, cold: S.cold, joseVerify: S.verify },
        loadGenerator: 'wrk -t1 (Debian package), test/bench/mix.lua', connections: CONNECTIONS, fixedRate: { rps: RATE, connections: RATE_CONNECTIONS },
        mix: { allowed: 0.85, warned: 0.10, denied: 0.05, operations: 20, consumers: 50, algorithm: 'ES256', jwks: 'HTTP' },
        limitedNodeOptions: HEAP_LIMIT, containerLimitMiB: CONTAINER_LIMIT_MIB,
      },
      checks: { mix: mixCheck, jwksFetches: jwksHttp.fetches, otlp: { exports: otlp.exports, bytes: otlp.bytes, jsonSpans: otlp.jsonSpans }, logLines: decisionLog, telemetryConfigured: telemetry !== undefined },
    });
    printTable(result);
    // A quick run checks the harness: it must not overwrite the committed full run's figures.
    const out = resolve(args.out ?? join(HERE, args.quick ? 'results/quick.json' : 'results/latest.json'));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
    writeFileSync(out.replace(/\.json$/, '') + '.md', markdown(result));
    log(`wrote ${out} and its .md table`);
    // The decision logs alone run to hundreds of MB.
    if (args.keep) log(`kept ${dir}`); else rmSync(dir, { recursive: true, force: true });
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** driftguard-core: no span export, no decision log, no recent-decisions ring. */
const CORE_TELEMETRY = { traces: { exporter: 'none' }, decisionLog: { output: 'none' }, recent: { size: 0 } };
/** driftguard-core: every lifecycle check and monitor off, request bodies not read. */
const CORE_LIFECYCLE = {
  credentials: { mode: 'off' }, revocation: { mode: 'off' }, delegation: { mode: 'off' },
  monitors: { kinds: [], maxBodyBytes: 0, retryStorm: { mode: 'off' }, idempotency: { mode: 'off' }, traversal: { mode: 'off' }, quarantine: { mode: 'off' } },
};

/**
 * The rules' telemetry section when this driftguard's schema has one (tracing to the local
 * receiver, decision log on); undefined while the schema has none.
 */
function telemetrySection(endpoint: string): Record<string, unknown> | undefined {
  const schema = JSON.parse(readFileSync(join(ROOT, 'rules/schema.json'), 'utf8')) as { properties: Record<string, unknown> };
  if (!schema.properties.telemetry) return undefined;
  return {
    // Every request traced and exported in batches over OTLP/HTTP protobuf to the receiver.
    traces: { exporter: 'otlp', protocol: 'http/protobuf', endpoint, serviceName: 'driftguard-bench', sampler: 'parentbased_always_on' },
    // Every decision logged, allowed ones too, as JSON lines on stdout (captured to a file).
    decisionLog: { output: 'stdout', allowSampleRate: 1 },
  };
}

/** The commit measured, and whether proxy/ had uncommitted changes (others' work in progress). */
function gitState(): { commit?: string; proxyUncommitted?: boolean } {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'proxy', 'rules'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return { commit, proxyUncommitted: dirty };
  } catch { return {}; }
}

main().catch((err: Error) => { process.stderr.write(`bench: ${err.stack ?? err.message}\n`); process.exit(1); });
