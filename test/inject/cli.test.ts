// `driftguard inject` as a process: flags and config file, a review over HTTPS,
// SIGTERM → exit 0; configuration errors exit 2 before listening.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { Agent, request as httpsPost } from 'node:https';
import type { Socket } from 'node:net';
import { selfSignedCertificate } from '../support/tls.ts';
import { httpsRequest, appPod, admissionReview, patched } from './support.ts';
import { validateObject } from '../support/k8s.ts';

const CLI = new URL('../../proxy/inject/cli.ts', import.meta.url).pathname;
const tls = selfSignedCertificate();
const dir = mkdtempSync(join(tmpdir(), 'driftguard-inject-cli-'));
const cert = join(dir, 'tls.crt');
const key = join(dir, 'tls.key');
writeFileSync(cert, tls.cert);
writeFileSync(key, tls.key);

/** The injector CLI as a child process, killed when the test ends whatever happened before. */
function run(t: Test, args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => { stdout += c; });
  child.stderr.on('data', (c: Buffer) => { stderr += c; });
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout, stderr }));
  return { child, exited, stdout: () => stdout };
}

/**
 * Wait for a whole line of the injector's output that includes `text`: 30 s at most. Its start
 * (under tap's loaders) takes a second or two, more on a busy machine than the 200 polls of
 * 25 ms the tests gave it, after which they went on with port 0.
 */
async function logged(proc: ReturnType<typeof run>, text: string): Promise<string | undefined> {
  const end = Date.now() + 30_000;
  for (;;) {
    const line = proc.stdout().split('\n').slice(0, -1).find((l) => l.includes(text));
    if (line !== undefined || Date.now() > end || proc.child.exitCode !== null) return line;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function listeningPort(proc: ReturnType<typeof run>): Promise<number> {
  const line = await logged(proc, 'injector listening');
  return line ? JSON.parse(line).port as number : 0;
}

t.test('serves reviews with the config file and flags, exits 0 on SIGTERM', async (t) => {
  const config = join(dir, 'injector.yaml');
  writeFileSync(config, 'image: registry.example.com/driftguard:9.9.9\nnativeSidecar: false\nrulesConfigMap: shop-rules\n');
  const proc = run(t, ['--tls-cert', cert, '--tls-key', key, '--listen', '127.0.0.1:0', '--config', config, '--native-sidecar', 'true', '--drain', '1500ms']);
  const port = await listeningPort(proc);
  t.ok(port > 0, 'logs the bound port');
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const res = await httpsRequest(port, tls.cert, { body: JSON.stringify(admissionReview(pod)) });
  t.equal(res.status, 200);
  const out = patched(pod, JSON.parse(res.text).response);
  validateObject(out);
  t.equal(out.spec.initContainers[0].restartPolicy, 'Always', '--native-sidecar true overrides the file');
  t.equal(out.spec.initContainers[0].image, 'registry.example.com/driftguard:9.9.9', 'image from the file');
  t.equal(out.spec.volumes.find((v: { name: string }) => v.name === 'driftguard-rules').configMap.name, 'shop-rules', 'default rules ConfigMap from the file');
  proc.child.kill('SIGTERM');
  // The API server may still send reviews to a terminating replica: they are answered while it drains.
  await new Promise((r) => setTimeout(r, 300));
  const during = await httpsRequest(port, tls.cert, { body: JSON.stringify(admissionReview(pod)) });
  t.equal(during.status, 200, 'a review during the drain is answered');
  t.equal(proc.child.exitCode, null, 'still running 300 ms after SIGTERM');
  const { code, stdout } = await proc.exited;
  t.equal(code, 0, 'exit 0 after SIGTERM');
  t.match(stdout, /injector draining.*"drainMs":1500/);
  t.match(stdout, /injector stopping/);
});

t.test('the drain ends keep-alive connections cleanly: idle ones at once, the others after their next answer', async (t) => {
  const proc = run(t, ['--tls-cert', cert, '--tls-key', key, '--listen', '127.0.0.1:0', '--image', 'x:1', '--drain', '3s']);
  const port = await listeningPort(proc);
  // As the API server's transport: a pool that keeps its connections between reviews.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const body = JSON.stringify(admissionReview(appPod({ labels: { 'driftguard.io/inject': 'true' } })));
  const send = () => new Promise<{ status: number; connection?: string; socket: Socket }>((resolve, reject) => {
    let socket: Socket | undefined;
    const req = httpsPost({ host: '127.0.0.1', port, ca: tls.cert, agent, method: 'POST', path: '/mutate', headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, socket: socket! }));
    });
    req.on('socket', (s) => { socket = s; });
    req.on('error', reject);
    req.end(body);
  });
  const idle = await send();
  t.equal(idle.connection, 'keep-alive', 'before the drain, connections are kept');
  const idleClosed = once(idle.socket, 'close');
  proc.child.kill('SIGTERM');
  await logged(proc, 'injector draining');
  // The connection is idle in the pool: the drain closes it, long before its 3 s end.
  await t.resolves(Promise.race([idleClosed, new Promise((_, reject) => setTimeout(() => reject(new Error('idle connection still open 1 s into the drain')), 1_000))]), 'an idle pooled connection is closed when the drain starts');
  const during = await send();
  t.equal(during.status, 200, 'a review during the drain is answered');
  t.equal(during.connection, 'close', 'and its answer closes the connection, so the next review goes elsewhere');
  await once(during.socket, 'close');
  t.equal(proc.child.exitCode, null, 'still draining');
  proc.child.kill('SIGTERM');
  t.equal((await proc.exited).code, 0);
});

t.test('a second signal during the drain stops at once', async (t) => {
  const proc = run(t, ['--tls-cert', cert, '--tls-key', key, '--listen', '127.0.0.1:0', '--image', 'x:1']);
  await logged(proc, 'injector listening');
  proc.child.kill('SIGTERM');
  await logged(proc, 'injector draining');
  proc.child.kill('SIGTERM');
  // A bounded wait, not a measured time: the drain alone would take its 5 s default.
  const first = await Promise.race([proc.exited.then(({ code }) => ({ code })), new Promise<'drain'>((r) => setTimeout(() => r('drain'), 3_000))]);
  t.same(first, { code: 0 }, 'exited, well before the 5 s default drain');
});

t.test('--help', async (t) => {
  const { code, stdout } = await run(t, ['--help']).exited;
  t.equal(code, 0);
  t.match(stdout, /--tls-cert FILE/);
  t.match(stdout, /driftguard\.io\/inject/);
});

t.test('configuration errors exit 2 with a message', async (t) => {
  const badConfig = join(dir, 'bad.yaml');
  writeFileSync(badConfig, 'image: x\nimagePullPolicy: Sometimes\nlistenPort: 0\ncolour: blue\n');
  const overLimit = join(dir, 'over.yaml');
  writeFileSync(overLimit, 'image: x\nresources:\n  requests: { cpu: 50m, memory: 512Mi }\n  limits: { memory: 0.25Gi }\n');
  // A literal OTEL_* value every injected sidecar would refuse: a crash loop in every opted-in pod.
  const badEnv = join(dir, 'env.yaml');
  writeFileSync(badEnv, 'image: x\nenv:\n  - { name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "https://collector:4318" }\n  - { name: OTEL_EXPORTER_OTLP_HEADERS, value: "secret-api-key-123" }\n');
  const badGrace = join(dir, 'grace.yaml');
  writeFileSync(badGrace, 'image: x\ngrace: 30 seconds\n');
  const noImage = join(dir, 'noimage.yaml');
  writeFileSync(noImage, 'imagePullPolicy: Always\n');
  const brokenConfig = join(dir, 'broken.yaml');
  writeFileSync(brokenConfig, 'image: x\nlistenPort: [15080\n');
  // 2: a usage error; 1: invalid configuration or a failed start, as the main CLI's.
  const cases: [string[], RegExp, number][] = [
    [['--listen', '127.0.0.1:0', '--image', 'x'], /--tls-cert and --tls-key are required/, 2],
    // No image from a flag or a file: a usage error naming both ways (it was exit 1, "flags: (top level): must have required property 'image'").
    [['--tls-cert', cert, '--tls-key', key, '--listen', '127.0.0.1:0'], /^driftguard inject: --image IMAGE is required, or image: in --config FILE \(see --help\)$/m, 2],
    [['--tls-cert', cert, '--tls-key', key, '--listen', '127.0.0.1:0', '--config', noImage], /noimage\.yaml: \(top level\): must have required property 'image'/, 1],
    [['--tls-cert', cert, '--tls-key', key, '--image', 'x', '--listen', 'nowhere'], /--listen/, 2],
    [['--tls-cert', cert, '--tls-key', key, '--image', 'x', '--native-sidecar', 'maybe'], /--native-sidecar must be true or false/, 2],
    [['--tls-cert', cert, '--tls-key', key, '--config', badConfig], /^(?=[\s\S]*bad\.yaml:2: imagePullPolicy: must be equal to one of)(?=[\s\S]*bad\.yaml:3: listenPort: must be >= 1)(?=[\s\S]*bad\.yaml:4: \(top level\): must NOT have additional properties \(colour\))/, 1],
    [['--tls-cert', cert, '--tls-key', key, '--config', join(dir, 'missing.yaml')], /missing\.yaml: cannot read \(ENOENT\)/, 1],
    // The API server would refuse every pod injected so, not the injector's start.
    [['--tls-cert', cert, '--tls-key', key, '--config', overLimit], /over\.yaml:2: resources\.requests\.memory: 512Mi is above resources\.limits\.memory \(0\.25Gi\)/, 1],
    [['--tls-cert', cert, '--tls-key', key, '--config', brokenConfig], /broken\.yaml:\d+: not valid YAML/, 1],
    [['--tls-cert', cert, '--tls-key', key, '--config', badEnv], /env\.yaml:2: env\[1\] \(OTEL_EXPORTER_OTLP_HEADERS\): a literal value would put the collector's credentials in the spec of every injected pod/, 1],
    [['--tls-cert', cert, '--tls-key', key, '--config', badGrace], /grace\.yaml:2: grace: not a duration/, 1],
    [['--tls-cert', join(dir, 'missing.crt'), '--tls-key', key, '--image', 'x', '--listen', '127.0.0.1:0'], /cannot start/, 1],
    [['--bogus'], /Unknown option/, 2],
  ];
  for (const [args, message, exit] of cases) {
    const { code, stderr } = await run(t, args).exited;
    t.equal(code, exit, `${args.join(' ')}: exit ${exit}`);
    t.match(stderr, message, `${args.join(' ')}: message`);
    t.notMatch(stderr, /secret-api-key/, `${args.join(' ')}: no header value in the message`);
  }
});
