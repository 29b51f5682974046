// `driftguard demo` from the JavaScript build, laid out as `make build` leaves it (build/proxy
// beside the checkout's rules/) and as the image lays it out (/app, not the user's to write,
// run as the image's uid 65532): it finds rules/demo.yaml and keeps its signing key somewhere
// it can write. A key file that is not a key is named, never quoted.

import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { imageLayout } from '../support/image.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = process.execPath;
const ENV = { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'none' };

interface Ran { code: number | null; stdout: string; stderr: string }

/** The demo until it has printed its examples (then SIGTERM), or until it exits. */
function demo(command: string[], args: string[] = []): Promise<Ran> {
  return new Promise((done, reject) => {
    const child = spawn(command[0]!, [...command.slice(1), 'demo', ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stdout.on('data', (d: Buffer) => { stdout += d; if (stdout.includes('Press Ctrl-C to stop.')) child.kill('SIGTERM'); });
    child.stderr.on('data', (d: Buffer) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); done({ code, stdout, stderr }); });
  });
}

async function freePort(): Promise<number> {
  return new Promise((r) => { const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => r(p)); }); });
}

/** A copy of rules/demo.yaml on free ports, readable by anyone. */
async function movedDemoRules(dir: string): Promise<string> {
  let text = readFileSync(join(ROOT, 'rules/demo.yaml'), 'utf8');
  for (const p of [15080, 15081, 15090, 15021]) text = text.replaceAll(`127.0.0.1:${p}`, `127.0.0.1:${await freePort()}`);
  const file = join(dir, 'demo.yaml');
  writeFileSync(file, text, { mode: 0o644 });
  return file;
}

t.test('from `make build`: the demo finds rules/demo.yaml beside build/, and a broken key file is named, not quoted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-demo-build-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(dir, 'build')], { cwd: ROOT, stdio: 'pipe' });
  // The checkout: rules/ and package.json beside build/ (whose rules/ holds only the schema).
  cpSync(join(ROOT, 'rules'), join(dir, 'rules'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  const cli = [NODE, join(dir, 'build/proxy/cli.js')];
  // The embedded rules (no --rules): their fixed ports may be another demo's; either way the rules must be read.
  const r = await demo(cli);
  // Before: exit 1, build/rules/demo.yaml: cannot read the rules file: ENOENT.
  t.notMatch(r.stderr, /cannot read the rules file|ENOENT/, 'the rules are found');
  const key = join(dir, '.demo/signing-key.json');
  t.ok(existsSync(key), 'the key is kept in .demo beside rules/');
  if (r.stdout.includes('Press Ctrl-C')) t.match(r.stdout, `rules: ${join(dir, 'rules/demo.yaml')}`);
  else t.match(r.stderr, /cannot listen on/, 'only a port taken stops it');

  // A truncated key file: named, with what to do; no stack, no key material.
  const text = readFileSync(key, 'utf8');
  const d = (JSON.parse(text) as { d: string }).d;
  writeFileSync(key, text.slice(0, text.indexOf(d) + 20));
  const broken = await demo(cli, ['--rules', await movedDemoRules(dir)]);
  t.equal(broken.code, 1);
  t.match(broken.stderr, `driftguard: cannot start\nthe demo's signing key ${key} is not JSON (a truncated write?): delete it and the demo makes a new one`);
  t.notMatch(broken.stderr, /\n\s+at |SyntaxError/, 'no stack');
  t.notMatch(broken.stderr, d.slice(0, 12), 'no key material');
  writeFileSync(key, '{"kty":"EC"}\n');
  const notKey = await demo(cli, ['--rules', await movedDemoRules(dir)]);
  t.equal(notKey.code, 1);
  t.match(notKey.stderr, `the demo's signing key ${key} is not a private JWK: delete it`);
});

const asImageUser = typeof process.getuid === 'function' && process.getuid() === 0 && existsSync('/usr/bin/setpriv');

t.test('in the image layout, as uid 65532 that cannot write /app: the key goes to the temporary directory', { skip: asImageUser ? false : 'needs root and setpriv to run as the image\'s user' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-demo-image-'));
  chmodSync(dir, 0o755);
  const keyDir = join(tmpdir(), 'driftguard-demo-65532');
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); rmSync(keyDir, { recursive: true, force: true }); });
  rmSync(keyDir, { recursive: true, force: true });
  const app = imageLayout(dir);
  // env -u: tap adds its process-info hook to NODE_OPTIONS, and it writes under .tap/, which uid 65532 may not.
  const r = await demo(['/usr/bin/env', '-u', 'NODE_OPTIONS', '/usr/bin/setpriv', '--reuid', '65532', '--regid', '65532', '--clear-groups', NODE, join(app, 'proxy/cli.js')], ['--rules', await movedDemoRules(dir)]);
  // Before: exit 1 with `Error: EACCES: permission denied, mkdir '<app>/.demo'` and a stack.
  t.match(r.stdout, `signing key: ${join(keyDir, 'signing-key.json')}`, r.stderr);
  t.notOk(existsSync(join(app, '.demo')), 'nothing written under /app');
  t.notMatch(r.stderr, /EACCES|\n\s+at /);
});
