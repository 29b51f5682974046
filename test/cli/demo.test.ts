// `driftguard demo` does what it prints: start it as a subprocess, run every printed curl
// line with bash, and check each answer against the `-> expect STATUS CODE` line above it.
// The demo's ports are fixed in rules/demo.yaml (15080, 15081, 15090, 15021): when another
// process holds one of them (another demo, another run of this test), the test runs the demo
// on a copy of rules/demo.yaml with free ports (`driftguard demo --rules FILE`) instead.
// Spans are not exported (OTEL_TRACES_EXPORTER=none): there is no collector here, and a flush
// that retries would slow the SIGTERM this test waits for.

import t from 'tap';
import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair, exportJWK } from 'jose';

const CLI = fileURLToPath(new URL('../../proxy/cli.ts', import.meta.url));
const DEMO_RULES = fileURLToPath(new URL('../../rules/demo.yaml', import.meta.url));
const PORTS = [15080, 15081, 15090, 15021];

function free(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => { const p = (srv.address() as { port: number }).port; srv.close(() => resolve(p)); });
  });
}

/** No extra arguments when the default ports are free, else --rules with a moved copy. */
async function demoArgs(): Promise<{ args: string[]; note: string }> {
  const busy = (await Promise.all(PORTS.map(async (p) => ((await free(p)) ? undefined : p)))).filter((p) => p !== undefined);
  if (busy.length === 0) return { args: [], note: 'rules/demo.yaml' };
  let text = readFileSync(DEMO_RULES, 'utf8');
  for (const p of PORTS) text = text.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
  const file = join(mkdtempSync(join(tmpdir(), 'dg-demo-')), 'demo.yaml');
  writeFileSync(file, text);
  return { args: ['--rules', file], note: `a copy on free ports (${busy.join(', ')} taken)` };
}

function bash(line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('bash', ['-c', line], { timeout: 10_000, maxBuffer: 1 << 20 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

/** Split curl -i output into status, lower-cased headers (the last response head) and body. */
function parseCurl(out: string): { status: number; headers: Record<string, string>; body: string } {
  const split = out.lastIndexOf('\r\n\r\n', out.search(/\r\n\r\n(?!HTTP\/)/) + 1);
  const head = out.slice(0, split);
  const body = out.slice(split + 4);
  const lines = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) { const i = l.indexOf(':'); if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim(); }
  return { status: Number(lines[0]!.split(' ')[1]), headers, body };
}

t.test('every curl line the demo prints does what it says', async (t) => {
  const { args, note } = await demoArgs();
  t.comment(`demo rules: ${note}`);
  const child = spawn(process.execPath, [CLI, 'demo', ...args], { env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d; });
  child.stderr.on('data', (d: Buffer) => { stderr += d; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });

  const started = await Promise.race([
    (async () => { while (!stdout.includes('Press Ctrl-C to stop.')) { if (child.exitCode !== null) return false; await new Promise((r) => setTimeout(r, 50)); } return true; })(),
    new Promise<boolean>((r) => setTimeout(() => r(false), 20_000).unref()),
  ]);
  t.ok(started, `the demo started (stderr: ${stderr.slice(0, 500)})`);
  if (!started) return;

  const lines = stdout.split('\n');
  const examples: { title: string; status: number; reason: string; curl: string }[] = [];
  lines.forEach((line, i) => {
    const m = /^# (.*?)\s+-> expect (\d{3}) ([a-z-]+)$/.exec(line);
    if (m) examples.push({ title: m[1]!, status: Number(m[2]), reason: m[3]!, curl: lines[i + 1]! });
  });
  t.ok(examples.length >= 10, `${examples.length} examples printed`);
  const reasons = new Set(examples.map((e) => e.reason));
  for (const reason of ['allowed', 'unknown-operation', 'operation-sunset', 'missing-credential', 'invalid-credential', 'credential-lifetime-exceeded',
    'unknown-consumer', 'insufficient-scope', 'undeclared-operation', 'contract-version-required', 'unknown-contract-version', 'stale-contract',
    'deprecated-operation', 'malformed-request']) {
    t.ok(reasons.has(reason), `an example shows ${reason}`);
  }
  t.ok(examples.some((e) => e.status === 200 && e.reason !== 'allowed'), 'an example shows a warn');

  // The tokens expire (15 minutes), and the lines then answer 401: the banner says when, at
  // the printed tokens' own exp, and how to get fresh ones (before: nothing said so).
  const expiry = /^# The tokens below expire at (\d\d:\d\d:\d\d) UTC \((\d{4}-\d\d-\d\d), 15 minutes from now\): .*restart the demo.*"More tokens" line/m.exec(stdout);
  t.ok(expiry, 'the expiry is printed above the curl lines');
  t.ok(expiry && stdout.indexOf(expiry[0]) < stdout.indexOf('\ncurl '), 'above the first curl line');
  const allow = examples.find((e) => e.reason === 'allowed')!;
  const exp = (JSON.parse(Buffer.from(/Bearer ([^ ']+)/.exec(allow.curl)![1]!.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp;
  t.equal(expiry && `${expiry[2]}T${expiry[1]}.000Z`, new Date(exp * 1000).toISOString(), 'the time is the tokens\' exp');
  t.match(stdout, /^More tokens: .* --ttl 15m$/m, 'the line named to mint one');

  for (const e of examples) {
    t.match(e.curl, /^curl /, `${e.title}: the next line is a curl command`);
    const r = parseCurl(await bash(e.curl));
    t.equal(r.status, e.status, `${e.title}: status`);
    if (e.reason === 'allowed') {
      t.notOk(r.headers['driftguard-warning'], `${e.title}: no warning`);
    } else if (e.status < 400) {
      t.match(r.headers['driftguard-warning'] ?? '', e.reason, `${e.title}: warning header`);
    } else {
      t.equal(r.headers['content-type'], 'application/problem+json', `${e.title}: problem+json`);
      t.equal(JSON.parse(r.body).reason, e.reason, `${e.title}: reason`);
    }
    if (e.reason === 'deprecated-operation') {
      t.match(r.headers['deprecation'] ?? '', /^@\d+$/, `${e.title}: Deprecation header`);
      t.ok(r.headers['sunset'], `${e.title}: Sunset header`);
      t.match(r.headers['link'] ?? '', 'rel="deprecation"', `${e.title}: Link header`);
    }
  }

  // The embedded rules have no file: a reload says so, not "no admin endpoint". A file given
  // with --rules is reloaded (it was refused as embedded too).
  const admin = /^admin: (http:\/\/[^/\s]+)\//m.exec(stdout)?.[1];
  t.ok(admin, 'the demo names its admin listener');
  if (admin) {
    const reload = await fetch(`${admin}/reload`, { method: 'POST' });
    const body = await reload.json() as { detail?: string; changed?: boolean };
    if (args.length === 0) {
      t.equal(reload.status, 409, 'POST /reload: 409');
      t.match(body.detail, /embedded .*no file to reload/);
    } else {
      t.equal(reload.status, 200, 'POST /reload of the --rules file: 200');
      t.equal(body.changed, false, 'the same file: nothing changed');
    }
  }

  // SIGHUP, as when its terminal closes: a graceful stop (Node's default action exited 129
  // without one, and a stop that ignored it would leave the demo holding its ports).
  child.kill('SIGHUP');
  const end = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000).unref())]);
  t.ok(end, 'the demo stops on SIGHUP');
  t.match(stderr, /"msg":"stopping","signal":"SIGHUP"/, 'gracefully');
  t.equal(end?.code, 0, `exit code 0 (stderr: ${stderr.slice(-500)})`);
});

t.test('demo --rules FILE reloads that file, as run --config does', async (t) => {
  let text = readFileSync(DEMO_RULES, 'utf8');
  for (const p of PORTS) text = text.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
  const file = join(mkdtempSync(join(tmpdir(), 'dg-demo-')), 'demo.yaml');
  writeFileSync(file, text);
  const child = spawn(process.execPath, [CLI, 'demo', '--rules', file], { env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' }, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d; });
  child.stderr.resume();
  for (let i = 0; i < 300 && !stdout.includes('Press Ctrl-C to stop.') && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  const admin = /^admin: (http:\/\/[^/\s]+)\//m.exec(stdout)?.[1];
  t.ok(admin, 'started');
  const reload = await fetch(`${admin}/reload`, { method: 'POST' });
  t.equal(reload.status, 200, 'POST /reload: 200 (it was 409, "these rules are embedded")');
  t.equal((await reload.json() as { changed: boolean }).changed, false);
  child.kill('SIGTERM');
  await new Promise((r) => child.once('close', r));
});

t.test('a demo port that is taken stops the demo with a message naming it, not a stack trace and a hang', async (t) => {
  // A copy on free ports, then one of them taken: the API's, then driftguard's own.
  for (const [what, pattern] of [['upstream', /the demo's API cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/], ['listen', /^driftguard: cannot start\n.*demo\.yaml:\d+:\d+: proxy\.listen: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE\nfree the port, or run `driftguard demo --rules FILE`/m]] as const) {
    let text = readFileSync(DEMO_RULES, 'utf8');
    for (const p of PORTS) text = text.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
    const file = join(mkdtempSync(join(tmpdir(), 'dg-demo-')), 'demo.yaml');
    writeFileSync(file, text);
    const port = Number(new RegExp(`${what}: (?:http://)?127\\.0\\.0\\.1:(\\d+)`).exec(text)![1]);
    const holder = createServer().listen(port, '127.0.0.1');
    await new Promise((r) => holder.once('listening', r));
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [CLI, 'demo', '--rules', file], { timeout: 20_000, env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' } }, (err, _out, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? null : 0, stderr }));
    });
    holder.close();
    // Before: a stack trace, then the process hung on the servers it had started (killed here at 20 s).
    t.equal(result.code, 1, `${what} taken: exit 1`);
    t.match(result.stderr, pattern, 'the message names the port');
    t.notMatch(result.stderr, /\n\s+at /, 'no stack trace');
  }
});

t.test('demo --rules FILE whose first issuer has no jwks.url says the demo serves that URL itself, not a TypeError stack', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-demo-'));
  const key = await generateKeyPair('ES256', { extractable: true });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(key.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
  let text = readFileSync(DEMO_RULES, 'utf8');
  for (const p of PORTS) text = text.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
  // As the README's key-generation example sets an issuer up: its keys in a file.
  text = text.replace(/jwks: \{ url: [^}]*\}/, `jwks: { file: ${join(dir, 'jwks.json')} }`);
  t.match(text, /jwks: \{ file: /);
  const file = join(dir, 'own.yaml');
  writeFileSync(file, text);
  const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile(process.execPath, [CLI, 'demo', '--rules', file], { timeout: 20_000, env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' } }, (err, _out, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? null : 0, stderr }));
  });
  t.equal(result.code, 1, 'exit 1');
  // Before: "driftguard: TypeError: Invalid URL" and a stack.
  t.match(result.stderr, /^driftguard: cannot start\n.*own\.yaml: the demo serves the first issuer's jwks\.url itself .* reads its keys from a file \(jwks\.file\) instead/m);
  t.notMatch(result.stderr, /TypeError|\n\s+at /, 'no TypeError, no stack trace');
});

t.test('demo --rules FILE whose jwks.url or upstream names no port is refused naming the field, not a TypeError stack', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-demo-'));
  let base = readFileSync(DEMO_RULES, 'utf8');
  for (const p of PORTS) base = base.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
  const cases: [string, string, RegExp][] = [
    ['jwks', base.replace(/(jwks: \{ url: http:\/\/127\.0\.0\.1):\d+/, '$1'), /identity\.issuers\[0\]\.jwks\.url http:\/\/127\.0\.0\.1: the demo serves it itself, over http on the port it names/],
    ['upstream', base.replace(/(upstream: http:\/\/127\.0\.0\.1):\d+/, '$1'), /proxy\.upstream http:\/\/127\.0\.0\.1: the demo serves it itself/],
  ];
  for (const [name, text, message] of cases) {
    t.not(text, base, `${name}: the port was taken out`);
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, text);
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [CLI, 'demo', '--rules', file], { timeout: 20_000, env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' } }, (err, _out, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? null : 0, stderr }));
    });
    t.equal(result.code, 1, `${name}: exit 1`);
    t.match(result.stderr, message, `${name}: names the field`);
    t.notMatch(result.stderr, /TypeError|\n\s+at /, `${name}: no TypeError, no stack trace`);
  }
});

t.test('the demo publishes the public half of its key alone: a key that is no ES256 key is refused, not stripped of d', async (t) => {
  const { demoKey } = await import('../../proxy/demo/demo.ts');
  const dir = mkdtempSync(join(tmpdir(), 'dg-demo-key-'));
  // An RSA private JWK put there by hand: without d, its p, q, dp, dq and qi still give the key.
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  writeFileSync(join(dir, 'signing-key.json'), JSON.stringify({ ...(await exportJWK(privateKey)), kid: 'mine', alg: 'RS256' }));
  await t.rejects(demoKey(dir), /is not an ES256 \(EC P-256\) key/);
  // The demo's own kind of key: its public members, nothing else.
  const ec = await generateKeyPair('ES256', { extractable: true });
  writeFileSync(join(dir, 'signing-key.json'), JSON.stringify({ ...(await exportJWK(ec.privateKey)), kid: 'demo-1', alg: 'ES256', use: 'sig' }));
  const { publicJwk } = await demoKey(dir);
  t.same(Object.keys(publicJwk).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
});
