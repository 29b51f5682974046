// Secrets stay secret: every token, cookie and Authorization value used here is searched for
// in everything driftguard wrote: its log lines (in process, and the CLI's stderr and stdout),
// the headers and bodies of its answers, and its admin endpoints.

import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { raw, get } from '../support/raw.ts';
import { writeRules } from '../support/driftguard.ts';
import { baseRules } from '../support/driftguard.ts';
import { token } from '../support/keys.ts';
import { world, keys, AGENT, HUMAN, type World } from './world.ts';

const CLI = fileURLToPath(new URL('../../proxy/cli.ts', import.meta.url));

/** The secrets, and the parts of them that must not leak either (a JWT's signature). */
function needles(secrets: readonly string[]): string[] {
  const out = new Set<string>();
  for (const s of secrets) {
    out.add(s);
    const parts = s.split('.');
    if (parts.length === 3 && parts[2]!.length >= 16) out.add(parts[2]!);
  }
  return [...out];
}

function assertNoSecret(t: Test, where: string, text: string, secrets: readonly string[]): void {
  t.ok(text.length > 0, `${where}: captured something`);
  const leaked = needles(secrets).filter((n) => text.includes(n));
  t.same(leaked, [], `${where}: no secret appears`);
}

/** Send a request that carries each secret in a different way; return what came back. */
async function attempts(w: { port: number }, make: (o?: any) => Promise<string>): Promise<{ secrets: string[]; answers: string }> {
  const now = Date.now();
  const secrets = [
    await make(), // allowed
    await make({ now: now - 3_600_000, ttl: 60 }), // expired
    await make({ aud: 'other' }),
    await make({ ttl: 7200 }), // lifetime exceeded
    await make({ sub: 'spiffe://x/stranger' }),
    await make({ scope: 'nothing' }),
    await make({ contract: '1999-01' }),
    await make({ sub: HUMAN, contract: '2026-01' }), // warned
    'opaque-secret-token-0123456789abcdef',
    'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ',
  ];
  const basic = Buffer.from('alice:hunter2-secret-password').toString('base64');
  const cookie = 'session=cookie-secret-4f9a1c2e7b';
  let answers = '';
  const record = (a: { status: number; headers: Record<string, string>; body: string }) => {
    answers += `${a.status}\n${Object.entries(a.headers).map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${a.body}\n`;
  };
  for (const s of secrets) {
    for (const target of ['/items/1', '/admin', '/legacy', '/items/1/../x']) {
      record(await raw(w.port, get(target, [`Authorization: Bearer ${s}`, `Cookie: ${cookie}`])));
    }
    record(await raw(w.port, get(`/items/1?access_token=${s}`)));
    // In the path itself: as a segment (a JWT), an encoded query, path parameters, an absolute-form
    // target's userinfo. driftguard's own answers are scanned; a forwarded one is the test
    // upstream's, which echoes the URL it was sent.
    const own = (a: { status: number; headers: Record<string, string>; body: string }) => { if (a.headers['x-upstream'] === undefined) record(a); };
    // A segment is recognised as a token by a JWT's shape only: an opaque one is an id like any other.
    if (s.split('.').length === 3) {
      own(await raw(w.port, get(`/items/${s}`, [`Authorization: Bearer ${secrets[0]}`])));
      own(await raw(w.port, get(`/nowhere/${s}`, [`Authorization: Bearer ${secrets[0]}`])));
      // Inside a segment, with something before or after it.
      for (const inSegment of [`id_token=${s}`, `Bearer%20${s}`, `a${s}`, `${s}=`]) own(await raw(w.port, get(`/nowhere/${inSegment}`, [`Authorization: Bearer ${secrets[0]}`])));
      // Percent-encoded, as a server that decodes the path reads it: the dots, the first letter, twice over.
      const enc = s.replaceAll('.', '%2E');
      for (const encoded of [enc, `%65${s.slice(1)}`, s.replaceAll('.', '%252E'), `eyJ.a.b-${enc}`, `${enc}%3Fx`, `${enc};a`]) own(await raw(w.port, get(`/items/${encoded}`, [`Authorization: Bearer ${secrets[0]}`])));
      record(await raw(w.port, get('/items/1', [`Authorization: Bearer ${secrets[0]}`, `User-Agent: agent/${enc}`])));
      // In the User-Agent an agent names itself with (spans record it).
      record(await raw(w.port, get('/items/1', [`Authorization: Bearer ${secrets[0]}`, `User-Agent: agent/1.0 ${s}`])));
    }
    for (const semicolon of ['%3B', '%3b', '%253B']) own(await raw(w.port, get(`/items/1${semicolon}jsessionid=${s}`)));
    own(await raw(w.port, get(`/items/1%3Faccess_token=${s}`, [`Authorization: Bearer ${secrets[0]}`])));
    own(await raw(w.port, get(`/items/1;jsessionid=${s}`)));
    own(await raw(w.port, get(`http://alice:${s}@example.com/items/1`)));
    record(await raw(w.port, get('/items/1', [`Authorization: Bearer ${s}`, `Authorization: Bearer ${s}`])));
    record(await raw(w.port, get('/items/1', [`Authorization: Bearer ${s} trailing`])));
  }
  record(await raw(w.port, get('/items/1', [`Authorization: Basic ${basic}`])));
  return { secrets: [...secrets, basic, 'hunter2-secret-password', 'cookie-secret-4f9a1c2e7b'], answers };
}

t.test('in process: log lines and answers carry no secret', async (t) => {
  const w: World = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; });
  const { secrets, answers } = await attempts(w, (o) => w.tok(o));
  w.jwks.down = true; // failures get logged too
  const rotated = await w.tok({ header: { kid: 'rotated' } });
  const a = await w.call('GET', '/items/1', { token: rotated });
  t.equal(a.status, 503);
  assertNoSecret(t, 'answers', answers + JSON.stringify([...a.headers]) + a.text, [...secrets, rotated]);
  assertNoSecret(t, 'log lines', JSON.stringify(w.logs) + ' ', [...secrets, rotated]);
  // The upstream, which legitimately sees the credential, is the control: the needles work.
  t.ok(w.up.seen.some((s) => String(s.headers.authorization).includes(secrets[0]!)), 'control: the allowed token did reach the upstream');
});

t.test('the CLI: stderr, stdout, answers and admin endpoints carry no secret', async (t) => {
  const k = await keys();
  const { upstream, jwksServer } = await import('../support/servers.ts');
  const { jwks } = await import('../support/keys.ts');
  const up = await upstream();
  const keyServer = await jwksServer(jwks(k.es));
  t.teardown(async () => { await up.close(); await keyServer.close(); });
  // Ports of its own choosing, read from its listening line: a port picked free beforehand could
  // be taken (another test's connection's source port, with the suite's jobs in parallel) before it binds.
  const file = writeRules(baseRules(up.origin, keyServer.url, (r) => {
    r.proxy.listen = '127.0.0.1:0';
    r.proxy.admin = '127.0.0.1:0';
  }));
  const child = spawn(process.execPath, [CLI, 'run', '--config', file, '--grace', '1s'], {
    env: { ...process.env, NODE_OPTIONS: '', OTEL_TRACES_EXPORTER: 'console' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d; });
  child.stderr.on('data', (d: Buffer) => { out += d; });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  // Start-up takes well under a second, and several on a loaded machine: 30 s at most.
  for (const end = Date.now() + 30_000; !/"driftguard listening".*\n/.test(out) && child.exitCode === null && Date.now() < end;) await new Promise((r) => setTimeout(r, 50));
  t.match(out, 'driftguard listening');
  const listening = JSON.parse(out.split('\n').find((l) => l.includes('"driftguard listening"'))!) as { listen: string; admin: string };
  const port = Number(listening.listen.split(':').pop());
  const adminPort = Number(listening.admin.split(':').pop());

  const { secrets, answers } = await attempts({ port }, (o) => token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09', ...o }));
  let admin = '';
  // A name the admin listener does not know is quoted back without a token in it.
  for (const path of ['/healthz', '/readyz', '/metrics', '/decisions', '/consumers', `/nope/${secrets[0]}`, `/decisions?${secrets[0]}=1`]) {
    const r = await fetch(`http://127.0.0.1:${adminPort}${path}`);
    admin += `${path.startsWith('/nope') || path.includes('?') ? '(a path with a token)' : path} ${r.status}\n${await r.text()}\n`;
  }
  child.kill('SIGTERM');
  t.equal(await exited, 0);
  assertNoSecret(t, 'answers', answers, secrets);
  assertNoSecret(t, 'admin endpoints', admin, secrets);
  assertNoSecret(t, 'stdout and stderr', out, secrets);
  t.ok(up.seen.length > 0, 'control: some calls were forwarded');
  // Control: what was scanned holds every decision's span, printed by the console exporter on
  // the export thread (the last ones only as it is shut down), not just the decision log.
  const decisions = out.split('\n').filter((l) => l.includes('"msg":"decision"')).length;
  t.ok(decisions >= 71, `control: ${decisions} decision-log lines`);
  t.equal(out.split("'driftguard.decision':").length - 1, decisions, 'control: a SERVER span printed for each decision');
});
