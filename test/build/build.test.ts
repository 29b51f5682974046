// The image's JavaScript (`make build`, the Dockerfile's build stage): tsc erases the types
// and rewrites the .ts imports, and the result runs with no TypeScript beside it. Laid out
// as the image lays it out (/app/proxy from the build, /app/rules from the repository,
// production node_modules), it checks the demo rules, serves a decision, and has its CLI
// where the injector's container command points.

import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IMAGE_CLI } from '../../proxy/inject/sidecar.ts';
import { buildConfig } from '../../proxy/inject/config.ts';
import { parse as parseYaml } from 'yaml';
import { imageLayout } from '../support/image.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { collector, eventually, KIND } from '../telemetry/support.ts';

const NODE = process.execPath;
const work = mkdtempSync(join(tmpdir(), 'driftguard-build-'));
const app = imageLayout(work);

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]);
}

t.test('the build is JavaScript only, with its CLI where the injector runs it', async (t) => {
  const all = files(join(app, 'proxy'));
  t.ok(all.length > 50, `${all.length} files`);
  t.same(all.filter((f) => f.endsWith('.ts')), [], 'no TypeScript in the image');
  t.ok(existsSync(join(app, IMAGE_CLI.replace(/^\/app\//, ''))), `${IMAGE_CLI} exists in the image layout`);
});

t.test('the image\'s own NODE_OPTIONS are the heap the injector and the chart give the sidecar', async (t) => {
  // A sidecar run from the image without the injector (a pod spec written by hand) had the
  // 96 MiB heap the injector had left because it stalled under full tables.
  const root = new URL('../../', import.meta.url);
  const env = /^ENV [\s\S]*?NODE_OPTIONS="([^"]+)"/m.exec(readFileSync(new URL('Dockerfile', root), 'utf8'));
  const injector = buildConfig({ image: 'x' }).nodeOptions;
  const chart = (parseYaml(readFileSync(new URL('charts/driftguard/values.yaml', root), 'utf8')) as { sidecar: { nodeOptions: string } }).sidecar.nodeOptions;
  t.equal(env?.[1], injector, 'the Dockerfile\'s ENV NODE_OPTIONS is the injector\'s default');
  t.equal(chart, injector, 'and the chart\'s sidecar.nodeOptions');
});

t.test('the built CLI checks the demo rules (the schema is found from the build)', async (t) => {
  const text = execFileSync(NODE, [join(app, 'proxy/cli.js'), 'check', join(app, 'rules/demo.yaml')], { encoding: 'utf8' });
  t.match(text, /valid \(rules [0-9a-f]+, 9 operations/);
});

t.test('the built sidecar runs without the type stripper and decides', async (t) => {
  const up = await upstream();
  const key = await testKey('ES256');
  const keys = await jwksServer(jwks(key));
  const otlp = await collector();
  t.teardown(async () => { await up.close(); await keys.close(); await otlp.close(); });
  // Spans are exported by a worker thread whose entry the build must carry as JavaScript too.
  const rules = writeRules(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '20ms' } } };
  }), work);
  // --no-experimental-strip-types: a .ts import anywhere in the build would fail to load.
  const child = spawn(NODE, ['--no-experimental-strip-types', join(app, 'proxy/cli.js'), 'run', '--config', rules], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { child.kill('SIGKILL'); });
  let output = '';
  const listening = await new Promise<{ listen: string; admin: string }>((resolveListen, reject) => {
    const onData = (b: Buffer) => {
      output += b.toString();
      const line = output.split('\n').find((l) => l.includes('driftguard listening'));
      if (line) resolveListen(JSON.parse(line) as { listen: string; admin: string });
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${output}`)));
    setTimeout(() => reject(new Error(`not listening within 10 s: ${output}`)), 10_000).unref();
  });
  for (let i = 0; i < 100; i++) {
    const ready = await fetch(`http://${listening.admin}/readyz`).catch(() => undefined);
    if (ready?.status === 200) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const allowed = await fetch(`http://${listening.listen}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(allowed.status, 200, 'a valid token on a current contract is forwarded');
  t.equal(up.seen.at(-1)?.url, '/items/7', 'the upstream got it');
  const denied = await fetch(`http://${listening.listen}/admin/wipe`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(denied.status, 403, 'an unknown operation is denied');
  t.equal((await denied.json() as { code: string }).code, 'unknown-operation');
  await eventually('the spans of both requests at the collector', async () => otlp.spans.filter((s) => s.kind === KIND.SERVER).length >= 2);
  t.same(otlp.spans.filter((s) => s.kind === KIND.SERVER).map((s) => s.attributes['driftguard.decision']).sort(), ['allow', 'deny'], 'exported from the export thread');
});
