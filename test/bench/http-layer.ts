// How much a faster HTTP layer could give driftguard: the CPU a request costs in Node's http
// server and in undici's client, each against the least any JavaScript code on a socket could
// spend on it (targets/layer.ts). The difference is the most that replacing either layer could
// save per request; driftguard's own work per request is in the main benchmark's JSON.
//
//   node test/bench/http-layer.ts [--rounds N] [--seconds S]
//
// Servers are driven by wrk (one thread, 32 connections, plain GET) and measured from
// /proc/<pid>/stat; clients measure their own CPU, against the raw server as their upstream.
// Rounds alternate the order of the two sides. Like the main benchmark, it times nothing in CI.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuSeconds, runNodeJson, spawnNode } from './proc.ts';
import { median } from './report.ts';

const LAYER = fileURLToPath(new URL('./targets/layer.ts', import.meta.url));
const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '8' } } });
const ROUNDS = Number(args.rounds);
const SECONDS = Number(args.seconds);

interface Figure { readonly requestsPerSecond: number; readonly cpuMicrosPerRequest: number }

async function wrkPlain(url: string, seconds: number): Promise<number> {
  const child = spawn('wrk', ['-t1', '-c32', `-d${seconds}s`, url], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const requests = Number(/^\s*(\d+) requests in/m.exec(out)?.[1]);
  if (code !== 0 || !(requests > 0) || /Non-2xx|Socket errors/.test(out)) throw new Error(`wrk ${url} failed (exit ${code}):\n${out}`);
  return requests;
}

async function server(mode: 'server-http' | 'server-net'): Promise<Figure> {
  const target = await spawnNode(mode, [LAYER, mode], { printsPort: true });
  try {
    const url = `http://127.0.0.1:${target.port}/items/123`;
    await wrkPlain(url, 2); // warm-up: JIT and connections
    const before = cpuSeconds(target.pid);
    const requests = await wrkPlain(url, SECONDS);
    return { requestsPerSecond: requests / SECONDS, cpuMicrosPerRequest: ((cpuSeconds(target.pid) - before) / requests) * 1e6 };
  } finally { await target.stop(); }
}

async function client(mode: 'client-undici' | 'client-net'): Promise<Figure> {
  const upstream = await spawnNode('upstream', [LAYER, 'server-net'], { printsPort: true });
  try {
    await runNodeJson([LAYER, mode, String(upstream.port), '2']); // warm the upstream
    const r = await runNodeJson<{ requests: number; cpuSeconds: number }>([LAYER, mode, String(upstream.port), String(SECONDS)]);
    return { requestsPerSecond: r.requests / SECONDS, cpuMicrosPerRequest: (r.cpuSeconds / r.requests) * 1e6 };
  } finally { await upstream.stop(); }
}

const runs: Record<string, Figure[]> = { 'server-http': [], 'server-net': [], 'client-undici': [], 'client-net': [] };
for (let round = 0; round < ROUNDS; round++) {
  const servers = ['server-http', 'server-net'] as const;
  const clients = ['client-undici', 'client-net'] as const;
  for (const m of round % 2 ? [...servers].reverse() : servers) runs[m]!.push(await server(m));
  for (const m of round % 2 ? [...clients].reverse() : clients) runs[m]!.push(await client(m));
  process.stderr.write(`round ${round + 1} of ${ROUNDS} done\n`);
}

const row = (m: string) => {
  const f = runs[m]!;
  return `| ${m} | ${Math.round(median(f.map((x) => x.requestsPerSecond)))} | ${median(f.map((x) => x.cpuMicrosPerRequest)).toFixed(1)} | ${f.map((x) => x.cpuMicrosPerRequest.toFixed(1)).join(', ')} |`;
};
const cpu = (m: string) => median(runs[m]!.map((x) => x.cpuMicrosPerRequest));
process.stdout.write([
  '| side | req/s | CPU µs per request (median) | rounds |',
  '| --- | ---: | ---: | --- |',
  ...Object.keys(runs).map(row),
  '',
  `Most a faster server layer could save: ${(cpu('server-http') - cpu('server-net')).toFixed(1)} µs per request.`,
  `Most a faster client layer could save: ${(cpu('client-undici') - cpu('client-net')).toFixed(1)} µs per request.`,
  '',
].join('\n'));
