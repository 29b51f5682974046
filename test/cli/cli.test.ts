// The command line as a platform engineer uses it: real subprocesses, exit codes, and
// messages that name the file, line and field.

import t from 'tap';
import { closeSync, mkdtempSync, openSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { jwtVerify, importJWK, decodeProtectedHeader } from 'jose';
import { testKey, jwks, ISSUER, AUDIENCE } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, startTest, writeRules, AGENT } from '../support/driftguard.ts';
import { cli, runDriftguard } from '../support/subprocess.ts';

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
  });
}

const CLI = fileURLToPath(new URL('../../proxy/cli.ts', import.meta.url));
const GOOD = baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json');
const BAD = `proxy:
  upstream: http://127.0.0.1:9
  mode: enforcing
identity:
  issuers: []
contract:
  versions: ["1"]
  operations:
    - { id: a, method: GET, path: /a, sensitivity: low }
`;

t.test('check: exit 0 for a valid file, 1 naming file:line and field for an invalid one, 2 for misuse', async (t) => {
  const good = writeRules(GOOD);
  const ok = await cli(['check', good]);
  t.equal(ok.code, 0);
  t.match(ok.stdout, good);
  const bad = writeRules(BAD);
  const no = await cli(['check', bad]);
  t.equal(no.code, 1);
  t.match(no.stderr, `${bad}:3:`);
  t.match(no.stderr, 'proxy.mode');
  t.match(no.stderr, `${bad}:5:`);
  t.match(no.stderr, 'identity.issuers');
  // The lifecycle sections' own checks, which `run` applies: `check` passed this file before.
  const lifecycleBad = writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json', (r) => {
    r.delegation = { consumers: [{ subject: 'spiffe://nobody', actors: [] }] };
  }));
  const lc = await cli(['check', lifecycleBad]);
  t.equal(lc.code, 1, 'a delegation subject not in the registry');
  t.match(lc.stderr, new RegExp(`${lifecycleBad}:\\d+:\\d+: delegation\\.consumers\\[0\\]\\.subject`));
  // The telemetry section's own checks: `check` passed a decision log in a missing folder, and `run` died with a stack.
  const telemetryBad = writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json', (r) => {
    r.telemetry = { traces: { exportTimeout: '25d' }, decisionLog: { output: 'missing/decisions.log' } };
  }));
  for (const command of [['check', telemetryBad], ['run', '--config', telemetryBad]]) {
    const tb = await cli(command);
    t.equal(tb.code, 1, `${command[0]}: telemetry values refused`);
    t.match(tb.stderr, new RegExp(`${telemetryBad}:\\d+:\\d+: telemetry\\.traces\\.exportTimeout: must be at most 1h`));
    t.match(tb.stderr, new RegExp(`${telemetryBad}:\\d+:\\d+: telemetry\\.decisionLog\\.output: cannot open the decision log`));
    t.notMatch(tb.stderr, /\n\s+at /, 'no stack trace');
  }
  // The files start-up reads beside the rules: a revocation list with a bad entry, a journal
  // that is some other file. `check` said valid; `run` refused them.
  const files = mkdtempSync(join(tmpdir(), 'driftguard-check-'));
  writeFileSync(join(files, 'revs.yaml'), 'revocations:\n  - { kind: jtx, value: abc, reason: r }\n');
  writeFileSync(join(files, 'notes.txt'), 'not a journal\n');
  const listed = writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json', (r) => {
    r.revocation = { file: 'revs.yaml', journal: join(files, 'notes.txt') };
  }), files);
  for (const command of [['check', listed], ['run', '--config', listed]]) {
    const lb = await cli(command);
    t.equal(lb.code, 1, `${command[0]}: the list file and the journal refused`);
    t.match(lb.stderr, /revocation\.journal: .*notes\.txt is not a revocation journal/, command[0]!);
    // `run` stops at the first of them (the journal is read first); `check` names both.
    if (command[0] === 'check') t.match(lb.stderr, new RegExp(`revs\\.yaml:2:\\d+: revocations\\[0\\]\\.kind: must be one of jti, task, subject, kid`), 'both at once');
  }
  const env = await cli(['run', '--config', good], { env: { OTEL_TRACES_SAMPLER: 'sometimes' } });
  t.equal(env.code, 1, 'a bad OTEL_* variable stops start-up');
  t.match(env.stderr, 'driftguard: invalid configuration\ntelemetry: OTEL_TRACES_SAMPLER="sometimes": must be one of');
  t.notMatch(env.stderr, /\n\s+at /, 'no stack trace');
  t.equal((await cli(['check'])).code, 2, 'no file');
  t.equal((await cli(['check', '/nonexistent.yaml'])).code, 1, 'a file that cannot be read');
});

t.test('run: an invalid rules file exits 1 naming the line; a valid one runs until SIGTERM and exits 0', async (t) => {
  const bad = writeRules(BAD);
  const no = await cli(['run', '--config', bad]);
  t.equal(no.code, 1);
  t.match(no.stderr, `${bad}:3:`);
  t.match(no.stderr, 'proxy.mode');
  t.equal((await cli(['run'])).code, 2, '--config missing');
  t.equal((await cli(['run', '--config', writeRules(GOOD), '--grace', 'soon'])).code, 2, 'a bad --grace');
  const long = await cli(['run', '--config', writeRules(GOOD), '--grace', '25d']);
  t.equal(long.code, 2, 'a --grace longer than a timer can wait (it would cut every request at once)');
  t.match(long.stderr, '--grace 25d: must be at most 24d');
  // Within the 8 s the stop allows after the grace of the timer limit: accepted before, and then
  // SIGTERM exited 1 at once, nothing drained.
  const edge = await cli(['run', '--config', writeRules(GOOD), '--grace', `${2 ** 31 - 1 - 4_000}ms`]);
  t.equal(edge.code, 2, 'a --grace whose stop deadline a timer cannot wait for');
  t.match(edge.stderr, 'must be at most 24d');

  const good = writeRules(GOOD);
  // An empty DRIFTGUARD_UPSTREAM (a manifest's value: "") is unset, not a bad override of the file's.
  // The port was free when picked; another connection may take it before the child binds it
  // (the suite runs two files at once): then another port.
  let port = 0;
  let ran!: Awaited<ReturnType<typeof cli>>;
  for (let i = 0; i < 3; i++) {
    port = await freePort();
    ran = await cli(['run', '--config', good, '--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0'], { until: (e) => e.includes('driftguard listening'), env: { DRIFTGUARD_UPSTREAM: '' } });
    if (!ran.stderr.includes('EADDRINUSE')) break;
  }
  t.equal(ran.code, 0, 'SIGTERM: graceful exit 0');
  t.match(ran.stderr, `127.0.0.1:${port}`, '--listen overrides proxy.listen');
  t.match(ran.stderr, '"signal":"SIGTERM"');
});

t.test('a bad flag or DRIFTGUARD_* value is blamed on the flag or the variable, not on a line of the rules file', async (t) => {
  const good = writeRules(GOOD);
  const flag = await cli(['run', '--config', good, '--listen', 'nonsense']);
  t.equal(flag.code, 1);
  t.match(flag.stderr, /^--listen: proxy\.listen: "nonsense" is not host:port$/m);
  t.notMatch(flag.stderr, /rules\.yaml:\d+/, 'not at the file\'s proxy.listen line');
  // The value that was validated is quoted, the flag's, not the file's (valid) one.
  const unschemed = await cli(['run', '--config', good, '--upstream', '127.0.0.1:8080']);
  t.match(unschemed.stderr, /^--upstream: proxy\.upstream: "127\.0\.0\.1:8080" is not valid/m);
  const variable = await cli(['run', '--config', good], { env: { DRIFTGUARD_UPSTREAM: 'http://u:secret@upstream/' } });
  t.equal(variable.code, 1);
  t.match(variable.stderr, /^DRIFTGUARD_UPSTREAM: proxy\.upstream: must be an origin only/m);
  t.notMatch(variable.stderr, /secret/, 'and not quoted');
  // A port that is taken: the address came from the flag.
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  t.teardown(() => busy.close());
  const taken = await cli(['run', '--config', good, '--listen', `127.0.0.1:${(busy.address() as AddressInfo).port}`, '--admin', '127.0.0.1:0']);
  t.equal(taken.code, 1);
  t.match(taken.stderr, /^--listen: proxy\.listen: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE$/m);
  t.match(taken.stderr, /^driftguard: cannot start\n/m, 'the rules are fine: not "invalid rules"');
  // A file that cannot be read has no line: none is made up.
  const missing = await cli(['run', '--config', '/nonexistent/rules.yaml']);
  t.match(missing.stderr, /^\/nonexistent\/rules\.yaml: \(top level\): cannot read the rules file: ENOENT$/m);
});

t.test('check takes the file as run does in the pod: the same overrides, flags or DRIFTGUARD_* variables', async (t) => {
  // A file shared by many deployments leaves proxy.upstream to the injector's DRIFTGUARD_UPSTREAM.
  const shared = writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json', (r) => { delete r.proxy.upstream; }));
  const bare = await cli(['check', shared]);
  t.equal(bare.code, 1, 'without an override: proxy.upstream is missing');
  t.match(bare.stderr, /missing required field "upstream"/);
  const variable = await cli(['check', shared], { env: { DRIFTGUARD_UPSTREAM: 'http://127.0.0.1:8080' } });
  t.equal(variable.code, 0, `with the variable the injector sets: valid (${variable.stderr.trim()})`);
  t.match(variable.stdout, /: valid \(.*; proxy\.upstream from DRIFTGUARD_UPSTREAM\)$/m, 'and says which value came from outside the file');
  const flag = await cli(['check', shared, '--upstream', 'http://127.0.0.1:8080']);
  t.equal(flag.code, 0, 'or the flag');
  t.match(flag.stdout, /; proxy\.upstream from --upstream\)$/m);
  // A bad override is blamed on it, as run blames it.
  const bad = await cli(['check', writeRules(GOOD), '--listen', 'nonsense']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /^--listen: proxy\.listen: "nonsense" is not host:port$/m);
});

t.test('a start that fails while the key server hangs exits at once, and says nothing of retrying', async (t) => {
  // A key server that accepts and never answers, within a fetch timeout of 10 minutes: a start
  // that waited for the fetch would not end within cli()'s 20 s, and the test fails so, with
  // nothing timed here.
  const hung = createServer((s) => { s.on('error', () => {}); });
  await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r));
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  t.teardown(() => { hung.close(); busy.close(); });
  const file = writeRules(baseRules('http://127.0.0.1:9', `http://127.0.0.1:${(hung.address() as AddressInfo).port}/jwks.json`, (r) => {
    r.identity.issuers[0].jwks.timeout = '10m';
  }));
  const run = await cli(['run', '--config', file, '--listen', `127.0.0.1:${(busy.address() as AddressInfo).port}`, '--admin', '127.0.0.1:0']);
  t.equal(run.code, 1);
  t.match(run.stderr, /^driftguard: cannot start\n/m);
  // It waited for the hung fetch (to its timeout), then said the keys would be retried.
  t.notMatch(run.stderr, /retrying in the background/, 'no retry is promised by a process that stops');
});

t.test('--help on every command exits 0 with its usage', async (t) => {
  const all = [['--help'], ['run', '--help'], ['check', '--help'], ['demo', '--help'], ['token', '-h']];
  const runs = await Promise.all(all.map((args) => cli(args)));
  all.forEach((args, i) => {
    t.equal(runs[i]!.code, 0, args.join(' '));
    t.match(runs[i]!.stdout, /Usage: driftguard/, args.join(' '));
  });
  const none = await cli([]);
  t.equal(none.code, 2, 'no command is a usage error');
  const unknown = await cli(['frobnicate']);
  t.equal(unknown.code, 2);
  t.match(unknown.stderr, 'frobnicate');
  t.equal((await cli(['check', '--bogus', 'x'])).code, 2, 'an unknown option');
});

t.test('token mints a token that verifies, and that driftguard accepts', async (t) => {
  const key = await testKey('ES256');
  const dir = mkdtempSync(join(tmpdir(), 'dg-cli-'));
  const keyFile = join(dir, 'key.json');
  writeFileSync(keyFile, JSON.stringify(key.privateJwk));
  const r = await cli(['token', '--key', keyFile, '--sub', AGENT, '--iss', ISSUER, '--aud', AUDIENCE, '--scope', 'items.read items.write', '--contract', '2026-09', '--ttl', '10m', '--claim', 'tenant=acme']);
  t.equal(r.code, 0, r.stderr);
  const tok = r.stdout.trim();
  const { payload } = await jwtVerify(tok, await importJWK(key.publicJwk, 'ES256'), { issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'] });
  t.equal(payload.sub, AGENT);
  t.equal(payload.scope, 'items.read items.write');
  t.equal(payload.contract_version, '2026-09');
  t.equal(payload.tenant, 'acme');
  t.equal(payload.exp! - payload.iat!, 600);
  t.equal(decodeProtectedHeader(tok).kid, key.kid);

  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startTest(baseRules(up.origin, keys.url));
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const a = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(a.status, 200, 'driftguard accepts the minted token');

  t.equal((await cli(['token', '--sub', AGENT])).code, 2, '--key missing');
  t.equal((await cli(['token', '--key', keyFile, '--sub', AGENT, '--ttl', 'forever'])).code, 2, 'a bad --ttl');
  writeFileSync(join(dir, 'public.json'), JSON.stringify(key.publicJwk));
  const pub = await cli(['token', '--key', join(dir, 'public.json'), '--sub', AGENT]);
  t.equal(pub.code, 1, 'a public key cannot sign');
  t.match(pub.stderr, 'public.json');
});

t.test('token with a key WebCrypto refuses for its algorithm names the key file, without a stack', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-cli-'));
  const keyFile = join(dir, 'p384.json');
  // A P-384 key without alg: signed as ES256 by default, which needs P-256.
  const { generateKeyPairSync } = await import('node:crypto');
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ format: 'jwk' });
  writeFileSync(keyFile, JSON.stringify(jwk));
  const r = await cli(['token', '--key', keyFile, '--sub', AGENT]);
  // Before: "TypeError: err.code?.startsWith is not a function" and a stack, hiding the cause.
  t.equal(r.code, 1);
  t.match(r.stderr, `cannot sign with the key in ${keyFile}`);
  t.notMatch(r.stderr, /startsWith|\n\s+at /);
});

t.test('an empty DRIFTGUARD_GRACE counts as unset, as the other DRIFTGUARD_* variables do', async (t) => {
  const r = await cli(['run', '--config', '/nonexistent/rules.yaml'], { env: { DRIFTGUARD_GRACE: '' } });
  // Before: exit 2, `not a duration: ""`. Now it goes on, to the missing rules file.
  t.equal(r.code, 1, r.stderr);
  t.match(r.stderr, /cannot read the rules file/);
});

t.test('a bad DRIFTGUARD_GRACE is named and is invalid configuration (1); a bad --grace stays a usage error (2)', async (t) => {
  const good = writeRules(GOOD);
  const seconds = await cli(['run', '--config', good], { env: { DRIFTGUARD_GRACE: '20' } });
  // Before: exit 2, `not a duration: "20"` and the usage, naming no variable.
  t.equal(seconds.code, 1, seconds.stderr);
  t.match(seconds.stderr, /^driftguard: invalid configuration\nDRIFTGUARD_GRACE: not a duration: "20"/);
  t.notMatch(seconds.stderr, /Usage:/, 'no usage: the command line was fine');
  const long = await cli(['run', '--config', good], { env: { DRIFTGUARD_GRACE: '30d' } });
  // Before: `--grace 30d: must be at most 24d`, though no --grace was given.
  t.equal(long.code, 1);
  t.match(long.stderr, /^DRIFTGUARD_GRACE 30d: must be at most 24d$/m);
  t.notMatch(long.stderr, /--grace/);
  const flag = await cli(['run', '--config', good, '--grace', '20'], { env: { DRIFTGUARD_GRACE: '30d' } });
  t.equal(flag.code, 2, 'the flag wins, and a bad flag is a usage error');
  t.match(flag.stderr, /^driftguard: --grace: not a duration: "20"/);
});

t.test('--drain-delay and DRIFTGUARD_DRAIN_DELAY are read as --grace is, and with it share one stop deadline', async (t) => {
  const good = writeRules(GOOD);
  const flag = await cli(['run', '--config', good, '--drain-delay', 'soon']);
  t.equal(flag.code, 2, 'a bad --drain-delay is a usage error');
  t.match(flag.stderr, /^driftguard: --drain-delay: not a duration: "soon"/);
  const variable = await cli(['run', '--config', good], { env: { DRIFTGUARD_DRAIN_DELAY: '5' } });
  t.equal(variable.code, 1, 'a bad DRIFTGUARD_DRAIN_DELAY is invalid configuration');
  t.match(variable.stderr, /^driftguard: invalid configuration\nDRIFTGUARD_DRAIN_DELAY: not a duration: "5"/);
  // Each within 24d, together not: the stop's deadline is one timer.
  const together = await cli(['run', '--config', good, '--grace', '20d', '--drain-delay', '5d']);
  t.equal(together.code, 2);
  t.match(together.stderr, '--drain-delay 5d and --grace 20d: together must be at most 24d');
  const empty = await cli(['run', '--config', '/nonexistent/rules.yaml'], { env: { DRIFTGUARD_DRAIN_DELAY: '' } });
  t.equal(empty.code, 1, 'an empty variable is unset');
  t.match(empty.stderr, /cannot read the rules file/);
});

/** The CLI with stdout's reader gone before it writes (`| true`), or stdout on a full device. */
function printTo(args: string[], stdout: 'closed' | number): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NODE_OPTIONS: '' }, stdio: ['ignore', stdout === 'closed' ? 'pipe' : stdout, 'pipe'] });
    if (stdout === 'closed') child.stdout!.destroy();
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

t.test('check, token and --help whose stdout reader is gone exit as the command would, with no stack', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-cli-epipe-'));
  const keyFile = join(dir, 'key.json');
  const k = await testKey('ES256');
  writeFileSync(keyFile, JSON.stringify(k.privateJwk));
  for (const args of [['check', writeRules(GOOD)], ['token', '--key', keyFile, '--sub', AGENT], ['--help'], ['check', '--help']]) {
    const r = await printTo(args, 'closed');
    // Before: an unhandled 'error' event (write EPIPE) with Node's stack, exit 1, for a valid file.
    t.equal(r.code, 0, `${args.join(' ')}: exit 0`);
    t.equal(r.stderr, '', 'nothing on stderr');
  }
  const invalid = await printTo(['check', '/nonexistent/rules.yaml'], 'closed');
  t.equal(invalid.code, 1, 'an invalid file is still 1');
  const full = openSync('/dev/full', 'w');
  t.teardown(() => closeSync(full));
  const r = await printTo(['check', writeRules(GOOD)], full);
  t.equal(r.code, 1, 'a write that fails otherwise (a full disk) is 1');
  t.equal(r.stderr, 'driftguard: cannot write to stdout: ENOSPC\n', 'said in one line');
});

t.test('token with a key file that is not JSON names the file and quotes none of it (it is key material)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-cli-'));
  const keyFile = join(dir, 'key.yaml');
  writeFileSync(keyFile, 'kty: EC\nd: c2VjcmV0LWtleS1tYXRlcmlhbA\n');
  const r = await cli(['token', '--key', keyFile, '--sub', AGENT]);
  t.equal(r.code, 1);
  t.match(r.stderr, `${keyFile} is not a JSON JWK`);
  // Before: `Unexpected token 'k', "kty: EC\nd:"... is not valid JSON`.
  t.notMatch(r.stderr, /kty|c2VjcmV0/, 'nothing of the file is echoed');
});

t.test('SIGUSR1 does not open the inspector and SIGUSR2 does not end the process: each is logged and ignored', async (t) => {
  const dg = await runDriftguard(writeRules(GOOD), ['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
  t.teardown(() => dg.kill());
  dg.child.kill('SIGUSR1');
  t.ok(await dg.waitFor((l) => l.msg === 'signal ignored' && l.signal === 'SIGUSR1'));
  // Node's default: "Debugger listening on ws://127.0.0.1:9229/…", which anything on a pod's
  // shared loopback could attach to and read the sidecar's memory through.
  await new Promise((r) => setTimeout(r, 300));
  t.notMatch(dg.output(), /Debugger listening/, 'no inspector');
  dg.child.kill('SIGUSR2');
  t.ok(await dg.waitFor((l) => l.msg === 'signal ignored' && l.signal === 'SIGUSR2'));
  const health = await fetch(`${dg.admin}/healthz`);
  t.equal(health.status, 200, 'still running');
  await health.text();
  dg.child.kill('SIGTERM');
  t.equal((await dg.exited).code, 0, 'and stops gracefully as ever');
});

t.test('run refuses a rules file that is a named pipe: each reload would hold the process until a writer came', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const dir = mkdtempSync(join(tmpdir(), 'dg-fifo-'));
  const fifo = join(dir, 'rules.yaml');
  execFileSync('mkfifo', [fifo]);
  const r = await cli(['run', '--config', fifo, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
  t.equal(r.code, 1);
  t.match(r.stderr, /rules\.yaml: \(top level\): is not a regular file \(a named pipe, a socket, a device or a folder\): driftguard run reads its rules file again at each reload/);
});

t.test('check weighs a file of unknown size as it reads it: one that never ends (/dev/zero) is refused, not read until the kernel kills the process', async (t) => {
  // Under a small heap, so that the refusal comes after a few MiB. Before: read whole first.
  const r = await cli(['check', '/dev/zero'], { env: { NODE_OPTIONS: '--max-old-space-size=64' } });
  t.equal(r.code, 1);
  t.match(r.stderr, /\/dev\/zero: \(top level\): the rules file is \d+ KiB: loading it takes about \d+ MiB of heap/);
});

t.test('run on a rules path that cannot be looked at (a symlink loop) says so as check does, without a stack trace', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-loop-'));
  symlinkSync(join(dir, 'b.yaml'), join(dir, 'a.yaml'));
  symlinkSync(join(dir, 'a.yaml'), join(dir, 'b.yaml'));
  for (const command of [['run', '--config', join(dir, 'a.yaml')], ['check', join(dir, 'a.yaml')]]) {
    const r = await cli(command);
    t.equal(r.code, 1, command[0]!);
    t.match(r.stderr, /a\.yaml: \(top level\): cannot read the rules file: ELOOP/, `${command[0]}: the file and why`);
    // Before, for run: "Error: ELOOP … at statSync (node:fs…) at run (…/proxy/run.ts…)".
    t.notMatch(r.stderr, /\n\s+at /, `${command[0]}: no stack trace`);
  }
});
