// Revocation: each kind takes effect on the next request, cached tokens included; the admin
// API needs the admin credential; journal replay across restarts, torn last line; list file
// and list URL (real loopback server), a failing URL keeping the last good list.

import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, writeFileSync, appendFileSync, readFileSync, readdirSync, rmSync, renameSync, existsSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:http';
import { spawn } from 'node:child_process';
import { tmpdir, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { configOf } from '../../proxy/lifecycle/config.ts';
import { loadRules, RulesError } from '../../proxy/rules/load.ts';
import { isLoopback } from '../../proxy/admin/server.ts';
import { MAX_LIST_BYTES } from '../../proxy/lifecycle/lists.ts';
import { writeRules, baseRules, AGENT } from '../support/driftguard.ts';
import { listen, close, jwksServer, upstream } from '../support/servers.ts';
import { runDriftguard } from '../support/subprocess.ts';
import { world, startLifecycle, problem, bearer, until, trustAlso, type World } from './support.ts';
import { ISSUER, testKey, jwks, token } from '../support/keys.ts';

const ADMIN_SECRET = 'adm1n-s3cret-value-for-tests-only';

function adminFile(dir: string): string {
  const file = join(dir, 'admin-credentials');
  writeFileSync(file, `# operators\noncall ${ADMIN_SECRET}\n`);
  return file;
}

async function revoke(admin: string, body: Record<string, unknown>, secret = ADMIN_SECRET): Promise<Response> {
  return fetch(`${admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` }, body: JSON.stringify(body) });
}

t.test('each kind of revocation takes effect on the next request, for a cached token too', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-revoke-'));
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: adminFile(dir), journal: join(dir, 'journal') }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });

  const cases = [
    { kind: 'jti', claims: { jti: 'token-to-revoke' }, value: 'token-to-revoke' },
    { kind: 'task', claims: { task_id: 'task-42' }, value: 'task-42' },
    { kind: 'subject', sub: 'spiffe://test.local/ns/ops/sa/bot', value: 'spiffe://test.local/ns/ops/sa/bot' },
    { kind: 'kid', value: w.key.kid },
    // Signed by the revoked key, without naming it: the key that verified it is what counts
    // (before, such a token went through a kid revocation).
    { kind: 'kid', value: w.key.kid, header: { kid: undefined } },
  ];
  for (const c of cases) {
    const tok = await w.token({ ...(c.sub ? { sub: c.sub, scope: 'items.read' } : {}), ...(c.claims ? { claims: c.claims } : {}), ...(c.kind === 'jti' ? { omit: ['jti'] } : {}), ...(c.header ? { header: c.header } : {}) });
    const first = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
    t.equal(first.status, 200, `${c.kind}: allowed before`);
    await first.text();
    const made = await revoke(dg.admin, { kind: c.kind, value: c.value, reason: `test ${c.kind}` });
    t.equal(made.status, 201, `${c.kind}: revoked`);
    const r = await made.json() as Record<string, any>;
    const res = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
    const body = await problem(t, res, 'credential-revoked', 401);
    t.match(body.detail, r.id, 'the caller learns the revocation id');
    t.notMatch(body.detail, `test ${c.kind}`, 'the operator\'s reason stays with the operator');
    t.match(res.headers.get('www-authenticate') ?? '', /error="invalid_token"/);
    const last = dg.seen.at(-1)!;
    t.equal(last.ctx.credential?.cached, true, `${c.kind}: denied on a verified-token cache hit`);
    t.equal(last.ctx.extra['revocation.kind'], c.kind);
    // Lift it: the same token works again.
    const lifted = await fetch(`${dg.admin}/revocations/${r.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_SECRET}` } });
    t.equal(lifted.status, 200);
    await lifted.text();
    const again = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
    t.equal(again.status, 200, `${c.kind}: allowed once lifted`);
    await again.text();
  }
  const before = w.up.seen.length;
  t.equal(before, cases.length * 2, 'no denied request reached the upstream');

  // Revocations are long-lived state: a rules reload keeps them.
  const tok = await w.token();
  const kept = await (await revoke(dg.admin, { kind: 'subject', value: AGENT, reason: 'before reload' })).json() as Record<string, any>;
  writeFileSync(dg.file, readFileSync(dg.file, 'utf8').replace('team-app', 'team-app-renamed'));
  await dg.dg.swap(loadRules(dg.file));
  t.equal(dg.dg.generation.rules.consumers.registry.get(AGENT)?.owner, 'team-app-renamed', 'the reload happened');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }), 'credential-revoked', 401);
  await (await fetch(`${dg.admin}/revocations/${kept.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_SECRET}` } })).text();

  // Without an end, a revocation lasts until every token it could match has expired: the
  // longest per-kind lifetime (12h for humans) plus the clock skew (30s) twice, since a token
  // accepted now may have lifetime + skew left and its exp is honoured up to skew late
  // (before: one skew, and such a token worked again for its last 30 s).
  const made = await revoke(dg.admin, { kind: 'subject', value: 'someone', reason: 'no end given' });
  const r = await made.json() as Record<string, any>;
  const span = Date.parse(r.end) - Date.parse(r.created);
  t.equal(span, 12 * 3600_000 + 60_000);
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as Record<string, any>;
  t.ok(listed.revocations.some((x: any) => x.id === r.id && x.by === 'oncall'), 'listed with who made it');

  // Secrets never reach the log: neither the admin credential nor the tokens.
  const logText = JSON.stringify(dg.logs);
  t.notMatch(logText, ADMIN_SECRET);
  t.ok(dg.logs.some((l) => l.msg === 'revocation added' && l.by === 'oncall' && l.kind === 'kid'), 'logs who revoked what');
});

t.test('the admin API refuses writes without the admin credential', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-'));
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: adminFile(dir) }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const body = JSON.stringify({ kind: 'jti', value: 'x', reason: 'y' });
  const none = await fetch(`${dg.admin}/revocations`, { method: 'POST', body });
  t.equal(none.status, 401);
  t.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
  t.match(JSON.parse(await none.text()).detail, /^admin writes need a bearer admin credential$/);
  const wrong = await fetch(`${dg.admin}/revocations`, { method: 'POST', body, headers: { authorization: 'Bearer not-the-secret' } });
  t.equal(wrong.status, 401);
  t.match(JSON.parse(await wrong.text()).detail, /^the admin credential was not recognised/, 'a credential sent but not recognised is told apart from none');
  // The credential file's whole `name secret` line, as the README's `cat admin-token` would send it from that file.
  const line = await fetch(`${dg.admin}/revocations`, { method: 'POST', body, headers: { authorization: `Bearer oncall ${ADMIN_SECRET}` } });
  t.equal(line.status, 401);
  const lineBody = await line.text();
  t.match(JSON.parse(lineBody).detail, /the word after the name/);
  t.notMatch(lineBody, new RegExp(ADMIN_SECRET), 'the credential is not echoed');
  const prefix = await fetch(`${dg.admin}/revocations`, { method: 'POST', body, headers: { authorization: `Bearer ${ADMIN_SECRET.slice(0, -1)}` } });
  t.equal(prefix.status, 401, 'a prefix of the secret is not the secret');
  await prefix.text();
  const del = await fetch(`${dg.admin}/revocations/anything`, { method: 'DELETE' });
  t.equal(del.status, 401);
  await del.text();
  const unq = await fetch(`${dg.admin}/quarantine/${encodeURIComponent('spiffe://x')}`, { method: 'DELETE' });
  t.equal(unq.status, 401);
  await unq.text();
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as Record<string, any>;
  t.same(listed.revocations, [], 'nothing was revoked');
  const ok = await revoke(dg.admin, { kind: 'jti', value: 'x', reason: 'y' });
  t.equal(ok.status, 201);
  await ok.text();
  const bad = await revoke(dg.admin, { kind: 'email', value: '', reason: 'y', end: '2000-01-01' });
  t.equal(bad.status, 400, 'a bad revocation is refused with what is wrong');
  t.match(await bad.text(), /kind must be one of/);
  // A mistyped field is said, not ignored: `End` left the default end, and the revocation lapsed.
  const typo = await revoke(dg.admin, { kind: 'subject', value: 'spiffe://x', reason: 'y', End: '2099-01-01T00:00:00Z', id: 'INC-1' });
  t.equal(typo.status, 400, 'an unknown field is refused');
  t.match((await typo.json() as { detail: string }).detail, /^unknown fields "End", "id" \(use kind, value, reason, end\)$/);
  const huge = await revoke(dg.admin, { kind: 'jti', value: 'x', reason: 'y'.repeat(20_000) });
  t.equal(huge.status, 400, 'a body past 16 KiB is refused');
  t.match(await huge.text(), /body larger than 16384 bytes/);
  t.notMatch(JSON.stringify(dg.logs), ADMIN_SECRET);
});

t.test('without an admin credential file, only loopback clients may write', async (t) => {
  t.ok(isLoopback('127.0.0.1') && isLoopback('::1') && isLoopback('::ffff:127.0.0.1') && isLoopback('127.9.8.7'));
  t.notOk(isLoopback('10.0.0.1') || isLoopback('::ffff:10.0.0.1') || isLoopback('fe80::1') || isLoopback(undefined) || isLoopback('1127.0.0.1'));
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const ok = await revoke(dg.admin, { kind: 'jti', value: 'x', reason: 'y' }, 'ignored');
  t.equal(ok.status, 201, 'a loopback client may write');
  t.equal((await ok.json() as Record<string, any>).by, 'loopback');
});

// The admin listener on every address, called from this machine's own non-loopback address:
// the kernel routes it locally, and driftguard sees that address as the peer.
const OWN_ADDRESS = Object.values(networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

t.test('without an admin credential file, a client that is not on loopback may not write', { skip: OWN_ADDRESS === undefined ? 'this machine has no non-loopback IPv4 address to call from' : false }, async (t) => {
  const own = OWN_ADDRESS!;
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.proxy.admin = '0.0.0.0:0'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const port = new URL(dg.admin).port;
  const refused = await revoke(`http://${own}:${port}`, { kind: 'jti', value: 'x', reason: 'y' }, 'ignored');
  t.equal(refused.status, 403, `a write from ${own} is refused`);
  t.match(await refused.text(), /loopback only/);
  const lift = await fetch(`http://${own}:${port}/quarantine/${encodeURIComponent(AGENT)}`, { method: 'DELETE' });
  t.equal(lift.status, 403, 'so is lifting a quarantine');
  await lift.text();
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as Record<string, any>;
  t.same(listed.revocations, [], 'nothing was revoked');
});

t.test('an unusable admin credential file refuses every write and says why, once a minute', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-file-'));
  const file = adminFile(dir);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: file }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const warnings = () => dg.logs.filter((l) => l.msg === 'the admin credential file is unusable: every admin write is refused');
  t.equal((await revoke(dg.admin, { kind: 'jti', value: 'a', reason: 'r' })).status, 201, 'the file works');
  t.same(warnings(), []);
  writeFileSync(file, '# emptied by a broken rotation\n');
  for (let i = 0; i < 3; i++) t.equal((await revoke(dg.admin, { kind: 'jti', value: 'b', reason: 'r' })).status, 401, 'refused: no credential');
  t.same(warnings().map((l) => [l.file, l.problem]), [[file, 'holds no credential']], 'said once, naming the file');
  rmSync(file);
  t.equal((await revoke(dg.admin, { kind: 'jti', value: 'c', reason: 'r' })).status, 401);
  t.same(warnings().at(-1)?.problem, 'cannot be read (ENOENT)');
  t.notMatch(JSON.stringify(dg.logs), ADMIN_SECRET);
});

/** A world whose rules keep admin revocations in a journal of their own (an admin credential file beside it). */
async function journaled(t: Test): Promise<{ w: World; journal: string; file: string }> {
  const w = await world();
  t.teardown(() => w.close());
  const dir = mkdtempSync(join(tmpdir(), 'dg-journal-'));
  const journal = join(dir, 'revocations.journal');
  const file = writeRules(w.rules((r) => { r.revocation = { adminCredentialFile: adminFile(dir), journal }; }), dir);
  return { w, journal, file };
}

t.test('admin API revocations survive a restart; a torn journal line is skipped and reported', async (t) => {
  const { w, journal, file } = await journaled(t);
  const tokA = await w.token({ claims: { task_id: 'task-a' } });
  const tokB = await w.token({ claims: { task_id: 'task-b' } });

  let dg = await startLifecycle({ file });
  // Whichever instance is open when the test ends (close is idempotent), even after a throw.
  t.teardown(() => dg.close());
  t.equal((await revoke(dg.admin, { kind: 'task', value: 'task-a', reason: 'task ended' })).status, 201);
  const gone = await (await revoke(dg.admin, { kind: 'task', value: 'task-b', reason: 'mistake' })).json() as Record<string, any>;
  t.equal((await fetch(`${dg.admin}/revocations/${gone.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_SECRET}` } })).status, 200);
  await dg.close();

  // A crash in the middle of an append leaves a torn last line.
  appendFileSync(journal, '{"op":"add","revocation":{"id":"torn","kind":"task","val');
  dg = await startLifecycle({ file });
  const skipped = dg.logs.filter((l) => l.msg === 'revocation journal line skipped');
  t.equal(skipped.length, 1, 'the torn line is reported');
  t.match(String(skipped[0]!.problem), /torn last line/);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tokA) }), 'credential-revoked', 401);
  const b = await fetch(`${dg.url}/items/1`, { headers: bearer(tokB) });
  t.equal(b.status, 200, 'a lifted revocation stays lifted after restart');
  await b.text();
  // The journal is clean again: a new revocation appends to a whole line and replays.
  t.equal((await revoke(dg.admin, { kind: 'task', value: 'task-b', reason: 'now for real' })).status, 201);
  await dg.close();
  t.ok(readFileSync(journal, 'utf8').endsWith('\n'));
  t.notMatch(readFileSync(journal, 'utf8'), '"torn"');

  dg = await startLifecycle({ file });
  t.equal(dg.logs.filter((l) => l.msg === 'revocation journal line skipped').length, 0);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tokA) }), 'credential-revoked', 401);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tokB) }), 'credential-revoked', 401);
});

t.test('a revocation list URL is polled and applied; a failing URL keeps the last good list', async (t) => {
  const w = await world();
  let list: unknown = { revocations: [{ kind: 'task', value: 'task-1', reason: 'incident 7' }] };
  let failing = false;
  let fetches = 0;
  const server = createServer((req, res) => {
    fetches++;
    t.equal(req.url, '/revocations.json?key=list-secret');
    if (failing) { res.writeHead(503).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(list));
  });
  const port = await listen(server);
  const url = `http://127.0.0.1:${port}/revocations.json?key=list-secret`;
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { url, interval: '1s', timeout: '500ms' }; }));
  t.teardown(async () => { await dg.close(); await close(server); await w.close(); });
  const tok1 = await w.token({ claims: { task_id: 'task-1' } });
  const tok2 = await w.token({ claims: { task_id: 'task-2' } });

  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tok1) }), 'credential-revoked', 401);
  const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(tok2) });
  t.equal(ok.status, 200);
  await ok.text();

  list = [{ kind: 'task', value: 'task-2', reason: 'incident 8' }];
  const before = fetches;
  // Watch the admin listing, not traffic: repeated denials would quarantine the consumer.
  const listed = async () => ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).revocations as Record<string, any>[];
  t.ok(await until(async () => (await listed()).some((r) => r.value === 'task-2')), 'the next poll applied the new list');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tok2) }), 'credential-revoked', 401);
  t.ok(fetches > before);
  const lifted = await fetch(`${dg.url}/items/1`, { headers: bearer(tok1) });
  t.equal(lifted.status, 200, 'an entry gone from the list is lifted');
  await lifted.text();

  failing = true;
  const failedAt = fetches;
  t.ok(await until(() => fetches >= failedAt + 2, 4000), 'polled while failing');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tok2) }), 'credential-revoked', 401);
  const status = await (await fetch(`${dg.admin}/revocations`)).json() as Record<string, any>;
  t.equal(status.sources.url.entries, 1, 'the last good list stays in force');
  t.match(status.sources.url.lastError, /HTTP 503/);
  t.equal(status.sources.url.location, `http://127.0.0.1:${port}/revocations.json`, 'the URL\'s query is not shown');
  t.notMatch(JSON.stringify(dg.logs), 'list-secret', 'nor logged');
});

t.test('a list larger than MAX_LIST_BYTES is refused and the last good list stays in force', async (t) => {
  const w = await world();
  const good = JSON.stringify({ revocations: [{ kind: 'task', value: 'task-1', reason: 'incident 7' }] });
  // An entry padded past the limit: sent whole (with content-length), or chunked without one.
  const huge = JSON.stringify({ revocations: [{ kind: 'task', value: 'task-2', reason: 'x'.repeat(MAX_LIST_BYTES) }] });
  let serve: 'good' | 'whole' | 'chunked' = 'good';
  let served = 0;
  const server = createServer((_req, res) => {
    served++;
    if (serve === 'good') { res.writeHead(200, { 'content-type': 'application/json' }).end(good); return; }
    if (serve === 'whole') { res.writeHead(200, { 'content-type': 'application/json' }).end(huge); return; }
    res.writeHead(200, { 'content-type': 'application/json' });
    for (let i = 0; i < huge.length; i += 1 << 20) res.write(huge.slice(i, i + (1 << 20)));
    res.end();
  });
  const port = await listen(server);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { url: `http://127.0.0.1:${port}/list.json`, interval: '1s', timeout: '2s' }; }));
  t.teardown(async () => { await dg.close(); await close(server); await w.close(); });
  const tok2 = await w.token({ claims: { task_id: 'task-2' } });
  const status = async () => ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).sources.url;
  t.equal((await status()).entries, 1, 'the good list applied');

  for (const how of ['whole', 'chunked'] as const) {
    serve = how;
    const before = served;
    t.ok(await until(async () => served > before && /larger than 4 MiB/.test((await status()).lastError ?? '')), `${how}: refused, and said why`);
    t.equal((await status()).entries, 1, `${how}: the last good list stays in force`);
    const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(tok2) });
    t.equal(ok.status, 200, `${how}: nothing from the refused list was applied`);
    await ok.text();
    serve = 'good';
    t.ok(await until(async () => (await status()).lastError === undefined), 'a good list is taken again');
  }
});

t.test('a broken list is parsed and reported once, not again at every interval until it changes', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-broken-'));
  const listFile = join(dir, 'revoked.json');
  writeFileSync(listFile, JSON.stringify([{ kind: 'task', value: 'task-1', reason: 'r' }]));
  let body = JSON.stringify([{ kind: 'task', value: 'task-2', reason: 'r' }]);
  let etag = '"v1"';
  let full = 0;
  let notModified = 0;
  const server = createServer((req, res) => {
    if (req.headers['if-none-match'] === etag) { notModified++; res.writeHead(304, { etag }).end(); return; }
    full++;
    res.writeHead(200, { 'content-type': 'application/json', etag }).end(body);
  });
  const port = await listen(server);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { file: 'revoked.json', url: `http://127.0.0.1:${port}/list.json`, interval: '1s', timeout: '500ms' }; }), { dir });
  t.teardown(async () => { await dg.close(); await close(server); await w.close(); });
  const reported = (source: string) => dg.logs.filter((l) => l.msg === 'revocation list not refreshed; the last good list stays in force' && l.source === source).length;
  const sources = async () => ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).sources;

  writeFileSync(listFile, JSON.stringify([{ kind: 'serial', value: 'x', reason: 'r' }]));
  body = JSON.stringify([{ kind: 'serial', value: 'y', reason: 'r' }]);
  etag = '"v2"';
  t.ok(await until(() => reported('file') === 1 && reported('url') === 1), 'both broken lists reported');
  const fullAfterBreak = full;
  await new Promise((r) => setTimeout(r, 3500));
  t.equal(reported('file'), 1, 'the unchanged broken file is not reported again');
  t.equal(reported('url'), 1, 'nor the unchanged broken list at the URL');
  t.equal(full, fullAfterBreak, 'which was not sent again: its ETag was asked for');
  t.ok(notModified >= 2, `answered 304 ${notModified} times`);
  const broken = await sources();
  t.match(broken.file.lastError, /kind: must be one of/, 'the file\'s problem stays in status');
  t.match(broken.url.lastError, /kind: must be one of/, 'and the URL\'s');
  t.equal(broken.url.entries, 1, 'the last good list stays in force');

  writeFileSync(listFile, JSON.stringify([{ kind: 'task', value: 'task-3', reason: 'r' }]));
  body = JSON.stringify([{ kind: 'task', value: 'task-4', reason: 'r' }]);
  etag = '"v3"';
  t.ok(await until(async () => { const s = await sources(); return s.file.lastError === undefined && s.url.lastError === undefined; }), 'mended lists are taken again');
});

t.test('a list file and a list URL may use the same id: both revocations stay in force', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-list-'));
  // Both lists name the same incident: the file revokes the agent's signing key, the URL another consumer.
  writeFileSync(join(dir, 'revoked.json'), JSON.stringify({ revocations: [{ id: 'INC-42', kind: 'kid', value: w.key.kid, reason: 'key leaked' }] }));
  const server = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ revocations: [{ id: 'INC-42', kind: 'subject', value: 'spiffe://test.local/ns/ops/sa/bot', reason: 'bot compromised' }] })); });
  const port = await listen(server);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { file: 'revoked.json', url: `http://127.0.0.1:${port}/revoked.json` }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); await close(server); });
  const listed = (await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>;
  t.same(listed.revocations.map((r: any) => [r.id, r.kind, r.source]).sort(), [['INC-42', 'kid', 'file'], ['INC-42', 'subject', 'url']], 'both listed');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }), 'credential-revoked', 401);
  t.equal(w.up.seen.length, 0, 'the file\'s revocation holds (before: the URL list\'s entry replaced it, and the token went through)');
  const lift = await fetch(`${dg.admin}/revocations/INC-42`, { method: 'DELETE' });
  t.equal(lift.status, 409, 'a list\'s revocation is lifted in its list, not through the admin API');
  await lift.text();
});

t.test('a reload that points revocation.file elsewhere, or drops it, changes the list in force', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-list-'));
  writeFileSync(join(dir, 'a.yaml'), 'revocations:\n  - kind: subject\n    value: spiffe://test.local/ns/app/sa/agent\n    reason: offboarded\n');
  writeFileSync(join(dir, 'b.yaml'), 'revocations:\n  - kind: task\n    value: task-9\n    reason: cancelled\n');
  writeFileSync(join(dir, 'broken.yaml'), 'revocations:\n  - kind: nope\n');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { file: 'a.yaml' }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const status = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); await r.text(); return r.status; };
  const listed = async () => (((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).revocations as { value: string }[]).map((r) => r.value);
  const reload = async (file: string | undefined) => {
    writeFileSync(dg.file, readFileSync(dg.file, 'utf8').replace(/\n?revocation:\n(  .*\n)*/, '\n').replace(/$/, file ? `revocation:\n  file: ${join(dir, file)}\n` : ''));
    await dg.dg.swap(loadRules(dg.file));
  };
  t.equal(await status(), 401, 'a.yaml revokes the agent');

  // A reload naming a broken list is refused with the list's file and line, as start-up is
  // (before: it was taken, and only a log line said the old list stayed in force).
  const inForce = dg.dg.generation.rules.hash;
  await t.rejects(reload('broken.yaml'), { name: 'RulesError', message: new RegExp(`${join(dir, 'broken.yaml')}:2:\\d+: revocations\\[0\\]`) });
  t.equal(dg.dg.generation.rules.hash, inForce, 'the rules in force did not change');
  t.equal(await status(), 401, 'and the previous list stays in force');
  // Mended, the same rules are taken.
  writeFileSync(join(dir, 'broken.yaml'), 'revocations:\n  - kind: task\n    value: task-8\n    reason: mended\n');
  await dg.dg.swap(loadRules(dg.file));
  t.ok(await until(async () => (await listed()).join() === 'task-8'), 'the mended list is in force');
  t.equal(await status(), 200);

  await reload('b.yaml');
  t.ok(await until(async () => (await listed()).join() === 'task-9'), 'b.yaml is in force (before: a.yaml went on being polled and applied)');
  t.equal(await status(), 200, 'the agent is no longer revoked');

  await reload(undefined);
  t.ok(await until(async () => (await listed()).length === 0), 'without revocation.file its revocations are lifted');
  t.equal(dg.logs.filter((l) => l.msg === 'revocation list removed by the reload; its revocations are lifted').length, 1, 'said once, for the file');
  // A reload of rules with no list at all says nothing of lists (before: "removed" for both kinds, every time).
  await dg.dg.swap(loadRules(dg.file));
  t.equal(dg.logs.filter((l) => l.msg === 'revocation list removed by the reload; its revocations are lifted').length, 1, 'nothing removed when nothing was there');
});

t.test('a revocation list file is read at start and re-read when it changes', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-list-'));
  const listFile = join(dir, 'revoked.yaml');
  writeFileSync(listFile, 'revocations:\n  - kind: subject\n    value: spiffe://test.local/ns/app/sa/agent\n    reason: offboarded\n');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { file: 'revoked.yaml', interval: '1s' }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }), 'credential-revoked', 401);
  writeFileSync(listFile, 'revocations: []\n');
  const listed = async () => ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).revocations as unknown[];
  t.ok(await until(async () => (await listed()).length === 0), 'the changed file was applied');
  const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  t.equal(ok.status, 200);
  await ok.text();
  // A broken file keeps the last good list and is reported.
  writeFileSync(listFile, 'revocations:\n  - kind: nope\n');
  t.ok(await until(() => dg.logs.some((l) => l.msg === 'revocation list not refreshed; the last good list stays in force')));
});

t.test('configuration errors name the file, line and field', async (t) => {
  const w = await world();
  t.teardown(() => w.close());
  const dir = mkdtempSync(join(tmpdir(), 'dg-config-'));
  const file = writeRules(w.rules((r) => {
    r.delegation = { consumers: [{ subject: 'spiffe://nobody', actors: [] }] };
    r.credentials = { maxTokenLifetime: { critical: '2h' } };
    r.revocation = { adminCredentialFile: 'missing-file', interval: '100ms' };
  }), dir);
  const err = t.throws(() => loadRules(file)) as RulesError;
  t.ok(err instanceof RulesError);
  const text = err.message;
  t.match(text, new RegExp(`${file}:\\d+:\\d+: delegation\\.consumers\\[0\\]\\.subject: "spiffe://nobody" is not a subject of consumers.registry`));
  t.match(text, /:\d+:\d+: credentials\.maxTokenLifetime\.critical: 2h is longer than identity\.maxTokenLifetime\.automation/);
  t.match(text, /:\d+:\d+: revocation\.adminCredentialFile: cannot read .*missing-file: ENOENT/);
  t.match(text, /:\d+:\d+: revocation\.interval: must be at least 1s/);
  for (const p of err.problems) t.ok(p.line > 0, `${p.field} has a line`);
  // 0s too: it meant a list URL fetched every millisecond.
  const zero = t.throws(() => loadRules(writeRules(w.rules((r) => { r.revocation = { url: 'http://127.0.0.1:9/list.json', interval: '0s' }; }), mkdtempSync(join(tmpdir(), 'dg-config-'))))) as RulesError;
  t.match(zero.message, /:\d+:\d+: revocation\.interval: must be at least 1s/);

  // A broken list file stops start-up with the list's own file, line and field.
  const listFile = join(dir, 'list.json');
  writeFileSync(listFile, '{"revocations": [\n  {"kind": "jti", "value": "a", "reason": "r"},\n  {"kind": "serial", "value": "b", "reason": "r"}\n]}\n');
  const file2 = writeRules(w.rules((r) => { r.revocation = { file: listFile }; }), mkdtempSync(join(tmpdir(), 'dg-config-')));
  await t.rejects(startLifecycle({ file: file2 }), { name: 'RulesError', message: new RegExp(`${listFile}:3:\\d+: revocations\\[1\\]\\.kind: must be one of jti, task, subject, kid`) });

  // So does a list file past the size limit, before it is read.
  const bigFile = join(dir, 'big.json');
  writeFileSync(bigFile, JSON.stringify({ revocations: [{ kind: 'jti', value: 'a', reason: 'x'.repeat(MAX_LIST_BYTES) }] }));
  const file3 = writeRules(w.rules((r) => { r.revocation = { file: bigFile }; }), mkdtempSync(join(tmpdir(), 'dg-config-')));
  await t.rejects(startLifecycle({ file: file3 }), { name: 'RulesError', message: new RegExp(`${bigFile}:1:1: .*the list is larger than 4 MiB`) });

  // And a list with more entries than revocation.maxEntries: memory follows the entries, and
  // 8 MiB of short ones (about 200,000) ran the chart's heap out at start.
  const longFile = join(dir, 'long.json');
  writeFileSync(longFile, JSON.stringify({ revocations: Array.from({ length: 3 }, (_, i) => ({ kind: 'jti', value: `j${i}`, reason: 'r' })) }));
  const file4 = writeRules(w.rules((r) => { r.revocation = { file: longFile, maxEntries: 2 }; }), mkdtempSync(join(tmpdir(), 'dg-config-')));
  await t.rejects(startLifecycle({ file: file4 }), { name: 'RulesError', message: new RegExp(`${longFile}:1:\\d+: revocations: the list has 3 entries, more than revocation\\.maxEntries \\(2\\)`) });
  const file5 = writeRules(w.rules((r) => { r.revocation = { file: longFile, maxEntries: 3 }; }), mkdtempSync(join(tmpdir(), 'dg-config-')));
  const started = await startLifecycle({ file: file5 });
  const held = (await (await fetch(started.admin + '/revocations')).json()) as { revocations: unknown[] };
  t.equal(held.revocations.length, 3, 'as many as maxEntries are held');
  await started.close();
});

t.test('under revocation.mode audit or off an unread list URL does not hold readiness: nothing waits for it', async (t) => {
  const w = await world();
  t.teardown(() => w.close());
  const server = createServer((_req, res) => { res.writeHead(503).end(); });
  const port = await listen(server);
  t.teardown(() => close(server));
  for (const mode of ['audit', 'off']) {
    const dg = await startLifecycle(w.rules((r) => { r.revocation = { mode, url: `http://127.0.0.1:${port}/list.json`, interval: '10m', timeout: '500ms' }; }));
    const ready = await fetch(`${dg.admin}/readyz`);
    // Before: 503 "revocation list URL not fetched yet", while every request was decided and forwarded.
    t.equal(ready.status, 200, `${mode}: ready`);
    await ready.text();
    const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
    t.equal(res.status, 200, `${mode}: and serving`);
    await res.text();
    await dg.close();
  }
});

t.test('until the revocation list URL has been read once: not ready, and every credential refused', async (t) => {
  const w = await world();
  let up = false;
  let fetches = 0;
  const server = createServer((_req, res) => {
    fetches++;
    if (!up) { res.writeHead(503).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ revocations: [{ kind: 'jti', value: 'stolen-jti', reason: 'leaked' }] }));
  });
  const port = await listen(server);
  // An interval longer than the test: the retries below come from the unread list's own retry.
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { url: `http://127.0.0.1:${port}/list.json`, interval: '10m', timeout: '500ms' }; }));
  t.teardown(async () => { await dg.close(); await close(server); await w.close(); });
  const down = await fetch(`${dg.admin}/readyz`);
  t.equal(down.status, 503, 'a sidecar that does not know what is revoked is not ready');
  t.match(((await down.json()) as { reasons: string[] }).reasons, [/revocation list URL not fetched yet/]);

  // Readiness alone does not stop traffic (a pod IP, a port-forward): the check itself refuses.
  const stolen = await w.token({ omit: ['jti'], claims: { jti: 'stolen-jti' } });
  const clean = await w.token({ omit: ['jti'], claims: { jti: 'clean-jti' } });
  for (const tok of [stolen, clean]) {
    const res = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
    t.equal(res.headers.get('retry-after'), '5', 'retry after the unread list\'s own retry, not the 10m interval');
    await problem(t, res, 'revocation-list-unavailable', 503);
  }
  t.equal(w.up.seen.length, 0, 'nothing reached the upstream');

  up = true;
  t.ok(await until(async () => (await fetch(`${dg.admin}/readyz`).then(async (r) => { await r.text(); return r.status; })) === 200, 8000), 'ready after the first good fetch, well before the interval');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(stolen) }), 'credential-revoked', 401);
  const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(clean) });
  await ok.text();
  t.equal(ok.status, 200);
  t.equal(w.up.seen.length, 1, 'only the clean token reached the upstream');
  // Once read, the list is fetched every interval again, not every 5 s.
  const after = fetches;
  await new Promise((r) => setTimeout(r, 6000));
  t.equal(fetches, after, 'no fetch within the next 6 s');
});

t.test('an unread list URL in audit mode: forwarded, with the would-deny reported', async (t) => {
  const w = await world();
  const server = createServer((_req, res) => { res.writeHead(503).end(); });
  const port = await listen(server);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { mode: 'audit', url: `http://127.0.0.1:${port}/list.json`, interval: '10m', timeout: '500ms' }; }));
  t.teardown(async () => { await dg.close(); await close(server); await w.close(); });
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  await res.text();
  t.equal(res.status, 200);
  t.match(res.headers.get('driftguard-warning') ?? '', /revocation-list-unavailable/);
  t.equal(w.up.seen.length, 1);
});

t.test('admin writes refuse what a web page can send: Origin, Sec-Fetch-Site, a body that is not JSON', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const body = JSON.stringify({ kind: 'subject', value: AGENT, reason: 'test' });
  const post = async (headers: Record<string, string>) => { const r = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers, body }); await r.text(); return r.status; };
  t.equal(await post({ 'content-type': 'text/plain' }), 415, 'text/plain: what a page may send without a preflight');
  t.equal(await post({}), 415, 'no content type');
  t.equal(await post({ 'content-type': 'application/json', origin: 'https://evil.example' }), 403, 'Origin');
  t.equal(await post({ 'content-type': 'application/json', 'sec-fetch-site': 'cross-site' }), 403, 'Sec-Fetch-Site');
  const listed = async () => ((await (await fetch(`${dg.admin}/revocations`)).json()) as { revocations: { id: string }[] }).revocations;
  t.same(await listed(), [], 'nothing revoked');
  t.equal(await post({ 'content-type': 'application/json; charset=utf-8', 'sec-fetch-site': 'none' }), 201, 'a JSON body from a client that is not a page');
  const [r] = await listed();
  const del = await fetch(`${dg.admin}/revocations/${r!.id}`, { method: 'DELETE', headers: { origin: 'null' } });
  await del.text();
  t.equal(del.status, 403, 'a DELETE from a page');
  t.equal((await listed()).length, 1, 'still in force');
});

t.test('the journal is compacted while running once lifted records outnumber those in force', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-journal-compact-'));
  const journal = join(dir, 'revocations.journal');
  const rules = w.rules((r) => { r.revocation = { journal }; });
  const dg = await startLifecycle(rules, { dir });
  const json = { 'content-type': 'application/json' };
  const kept: string[] = [];
  for (let i = 0; i < 700; i++) {
    const made = await (await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: json, body: JSON.stringify({ kind: 'jti', value: `token-${i}`, reason: 'test' }) })).json() as { id: string };
    if (i % 10 === 0) { kept.push(made.id); continue; }
    await (await fetch(`${dg.admin}/revocations/${made.id}`, { method: 'DELETE' })).text();
  }
  // 700 adds and 630 deletes were written; 70 revocations are in force.
  const lines = readFileSync(journal, 'utf8').split('\n').filter(Boolean).length;
  t.ok(lines < 1_000, `the journal holds ${lines} records, not 1,330`);
  t.ok(dg.logs.some((l) => l.msg === 'revocation journal compacted'), 'and says so');
  await dg.close();
  const again = await startLifecycle({ file: dg.file }, { dir });
  t.teardown(async () => { await again.close(); await w.close(); });
  const listed = (await (await fetch(`${again.admin}/revocations`)).json()) as { revocations: { id: string }[] };
  t.same(listed.revocations.map((r) => r.id).sort(), [...kept].sort(), 'a restart replays exactly the revocations in force');
});

t.test('revocation.journal must be a journal of its own: a file the rules read, a directory or a non-journal is refused, and left as it is', async (t) => {
  const w = await world();
  t.teardown(() => w.close());
  const dir = mkdtempSync(join(tmpdir(), 'dg-journal-'));
  const refused = (journal: string) => {
    const file = writeRules(w.rules((r) => { r.revocation = { journal }; }), dir);
    const err = t.throws(() => loadRules(file)) as RulesError;
    return { file, message: err instanceof RulesError ? err.message : String(err) };
  };
  // Before: `check` said valid, and start-up rewrote the rules file empty.
  const self = refused('rules.yaml');
  t.match(self.message, /revocation\.journal: .* is a file the rules read \(the rules file\)/);
  t.ok(readFileSync(self.file, 'utf8').length > 100, 'the rules file is untouched');
  mkdirSync(join(dir, 'adir'));
  t.match(refused('adir').message, /revocation\.journal: .*adir is a directory/);

  // A file of other text: start-up stops at the field, and the file is left as it was.
  const other = join(dir, 'notes.txt');
  writeFileSync(other, 'these are my notes\nno trailing newline');
  const rules = writeRules(w.rules((r) => { r.revocation = { journal: other }; }), dir);
  await t.rejects(startLifecycle({ file: rules }), { name: 'RulesError', message: /revocation\.journal: .*notes\.txt is not a revocation journal/ });
  t.equal(readFileSync(other, 'utf8'), 'these are my notes\nno trailing newline', 'not cut, not rewritten');
  // One line of other text, without a newline: refused alike.
  writeFileSync(other, 'a note');
  await t.rejects(startLifecycle({ file: rules }), { name: 'RulesError', message: /is not a revocation journal/ });
  t.equal(readFileSync(other, 'utf8'), 'a note');

  // A reload to it is refused the same way: before, taken (it applies at the next start),
  // and that start then failed, long after the edit.
  const running = mkdtempSync(join(tmpdir(), 'dg-journal-'));
  const dg = await startLifecycle({ file: writeRules(w.rules((r) => { r.revocation = { journal: join(running, 'revocations.journal') }; }), running) });
  t.teardown(() => dg.close());
  await t.rejects(dg.dg.swap(loadRules(rules)), { name: 'RulesError', message: /revocation\.journal: .*notes\.txt is not a revocation journal/ });
  t.equal(readFileSync(other, 'utf8'), 'a note', 'left as it is');

  // A journal in a directory that takes no files (procfs; a read-only mount, which root here
  // cannot make; a missing directory the loader refuses already): start-up says it cannot be
  // written, and so does a reload to it now (before: taken, and every pod's next start failed).
  const there = writeRules(w.rules((r) => { r.revocation = { journal: '/proc/revocations.journal' }; }), dir);
  await t.rejects(startLifecycle({ file: there }), { name: 'RulesError', message: /revocation\.journal: cannot be written: E[A-Z]+/ }, 'start-up refuses it');
  await t.rejects(dg.dg.swap(loadRules(there)), { name: 'RulesError', message: /revocation\.journal: cannot be written: E[A-Z]+/ }, 'and a reload to it');
  t.equal(configOf(dg.dg.generation.rules).revocation.journal, join(running, 'revocations.journal'), 'the rules in force are as they were');
  // One that can be written is taken (for the next start), and its check touches only a new
  // file of its own: a symlink planted where a probe of a known name went (whoever else writes
  // the directory) is not followed, and the file it names not truncated.
  const victim = join(dir, 'victim.journal');
  writeFileSync(victim, 'kept\n');
  symlinkSync(victim, join(running, `.driftguard-probe-${process.pid}`));
  await dg.dg.swap(loadRules(writeRules(w.rules((r) => { r.revocation = { journal: join(running, 'next.journal') }; }), dir)));
  t.equal(readFileSync(victim, 'utf8'), 'kept\n', 'the planted symlink\'s target is untouched');
  t.same(readdirSync(running).filter((f) => f.startsWith('.driftguard-probe')), [`.driftguard-probe-${process.pid}`], 'no probe file of its own left');
});

t.test('a journal compacted empty whose first append a crash tore is a journal: the torn record is cut off and start-up goes on', async (t) => {
  const { w, journal, file } = await journaled(t);
  // Started with nothing revoked: the journal is compacted to an empty file.
  await (await startLifecycle({ file })).close();
  t.equal(readFileSync(journal, 'utf8'), '');
  // A file grown before its data reached the disk reads as zero bytes, with or without the newline.
  for (const torn of ['{"op":"add","revocation":{"id":"a', '{"o', '\0'.repeat(300), `${'\0'.repeat(300)}\n`]) {
    writeFileSync(journal, torn);
    // Before: "is not a revocation journal", at this start and every one after it.
    const dg = await startLifecycle({ file });
    t.match(dg.logs.find((l) => l.msg === 'revocation journal line skipped'), { problem: /torn last line|zero bytes/ }, `${JSON.stringify(torn).slice(0, 20)}: reported`);
    t.equal((await revoke(dg.admin, { kind: 'task', value: 'task-a', reason: 'incident' })).status, 201, 'and the journal takes the next record');
    await dg.close();
    t.match(readFileSync(journal, 'utf8'), /^\{"op":"add".*"task-a".*\n$/, 'on a line of its own');
  }
});

t.test('a token an older version journaled as a value is dropped and one in a reason replaced: never listed or written back', async (t) => {
  const { w, journal, file } = await journaled(t);
  const leaked = await w.token({ claims: { task_id: 'task-l' } });
  const add = (id: string, kind: string, value: string, reason: string) => JSON.stringify({ op: 'add', revocation: { id, kind, value, reason, endMs: Date.now() + 3_600_000, createdMs: Date.now(), by: 'ops' } });
  writeFileSync(journal, `${add('by-value', 'jti', leaked, 'leaked')}\n${add('by-reason', 'task', 'task-l', `seen in a log: ${leaked}`)}\n`);
  const dg = await startLifecycle({ file });
  t.teardown(() => dg.close());
  const skipped = dg.logs.filter((l) => l.msg === 'revocation journal line skipped');
  t.equal(skipped.length, 1, 'the value holding a token is reported');
  t.match(String(skipped[0]!.problem), /^revocation by-value's value holds a whole token/);
  const listed = await (await fetch(`${dg.admin}/revocations`)).text();
  t.notMatch(listed, leaked.split('.')[2]!, 'GET /revocations holds no token');
  t.match(JSON.parse(listed).revocations, [{ id: 'by-reason', reason: /^seen in a log: / }], 'the revocation with the token in its reason stands');
  t.notMatch(readFileSync(journal, 'utf8'), leaked.split('.')[2]!, 'the compacted journal holds no token');
  t.notMatch(JSON.stringify(dg.logs), leaked.split('.')[2]!, 'nor does the log');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(leaked) }), 'credential-revoked', 401);
});

t.test('a subject revoked as ["<issuer>","<subject>"] (as /consumers names it) is revoked from that issuer only', async (t) => {
  const w = await world();
  const OTHER = 'https://other.test.local';
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const call = async (iss: string) => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: 'client-7', iss })) }); await r.text(); return r.status; };
  t.equal(await call(OTHER), 200);
  const listed = await (await fetch(`${dg.admin}/consumers`)).json() as { consumers: { subject: string }[] };
  const shown = JSON.stringify([OTHER, 'client-7']);
  t.ok(listed.consumers.some((c) => c.subject === shown), `/consumers names it ${shown}`);
  // It answered 201 and revoked nothing: client-7 of either issuer went on.
  const revoked = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: shown, reason: 'leaked' }) });
  t.equal(revoked.status, 201);
  await revoked.text();
  t.equal(await call(OTHER), 401, 'that issuer\'s client-7 is revoked');
  t.equal(await call(ISSUER), 200, 'another issuer\'s client-7 is not');
  const refused = dg.seen.filter((s) => s.decision?.reason === 'credential-revoked').at(-1)!;
  t.match(refused.decision!.detail, /^this consumer was revoked/, 'as the token\'s own subject, not an actor');
  t.notOk('revocation.actor' in refused.ctx.extra);
  // Spaced as a person writes JSON: the same pair.
  const spaced = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: `["${ISSUER}", "client-7"]`, reason: 'leaked' }) });
  t.equal(spaced.status, 201);
  await spaced.text();
  t.equal(await call(ISSUER), 401, 'the pair written with a space revokes too');
});

t.test('a kid or jti revoked as ["<issuer>","<value>"] is revoked from that issuer only: by the admin API, a list file and after a restart', async (t) => {
  // Two issuers, each with its own key under kid "1" (short kids are common): revoking one
  // issuer's leaked key cut off the other's consumers, and no form named one issuer's kid.
  const OTHER = 'https://other.test.local';
  const [a, b] = await Promise.all([testKey('ES256', '1'), testKey('ES256', '1')]);
  const w = await world();
  const setB = await jwksServer(jwks(b));
  const dir = mkdtempSync(join(tmpdir(), 'dg-kid-pair-'));
  w.keys.body = jwks(a);
  const listFile = join(dir, 'revoked.yaml');
  writeFileSync(listFile, 'revocations: []\n');
  const file = writeRules(w.rules((r) => {
    trustAlso(r, OTHER);
    r.identity.issuers[1].jwks = { ...r.identity.issuers[1].jwks, url: setB.url };
    r.consumers.unknown = 'allow';
    r.revocation = { adminCredentialFile: adminFile(dir), journal: join(dir, 'journal'), file: 'revoked.yaml', interval: '1s' };
  }), dir);
  let dg = await startLifecycle({ file });
  t.teardown(async () => { await dg.close(); await w.close(); await setB.close(); });
  const call = async (key: typeof a, iss: string, claims: Record<string, unknown> = {}) => {
    const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await token({ key, iss, sub: 'client-7', scope: 'items.read', contract: '2026-09', claims, ...('jti' in claims ? { omit: ['jti' as const] } : {}) })) });
    await r.text();
    return r.status;
  };
  t.equal(await call(a, ISSUER), 200);
  t.equal(await call(b, OTHER), 200);

  const pair = JSON.stringify([ISSUER, '1']);
  const made = await revoke(dg.admin, { kind: 'kid', value: pair, reason: 'issuer A key leaked' });
  t.equal(made.status, 201);
  await made.text();
  t.equal(await call(a, ISSUER), 401, 'that issuer\'s key "1" is revoked');
  t.equal(await call(b, OTHER), 200, 'another issuer\'s key "1" is not');
  const listed = ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).revocations as Record<string, unknown>[];
  t.same(listed.map((r) => [r.kind, r.value]), [['kid', pair]], 'GET /revocations shows it as written');
  // The same pair spaced is a retry of the same revocation, not a second one.
  const again = await revoke(dg.admin, { kind: 'kid', value: `["${ISSUER}", "1"]`, reason: 'retry' });
  t.equal(again.status, 200);
  await again.text();

  // Replayed from the journal at a restart: still that issuer's only.
  await dg.close();
  dg = await startLifecycle({ file });
  t.equal(await call(a, ISSUER), 401, 'after a restart, still revoked');
  t.equal(await call(b, OTHER), 200, 'and the other issuer\'s still not');

  // From a list file, as a person writes it (spaced).
  writeFileSync(listFile, `revocations:\n  - kind: kid\n    value: '["${OTHER}", "1"]'\n    reason: issuer B key leaked too\n  - kind: jti\n    value: '["${ISSUER}", "token-1"]'\n    reason: one token\n`);
  // A poll whose answer had started when the list landed is cut by the revocation's sweep, as
  // the product must: not yet the refusal, poll again (it failed the test: fetch failed, other side closed).
  t.ok(await until(async () => (await call(b, OTHER).catch(() => 'cut')) === 401), 'the list\'s pair revokes the other issuer\'s key "1"');

  // A jti pair: one issuer's token id, not another issuer's token that happens to carry it.
  const lifted = ((await (await fetch(`${dg.admin}/revocations`)).json()) as Record<string, any>).revocations.find((r: Record<string, unknown>) => r.source === 'admin');
  t.equal((await fetch(`${dg.admin}/revocations/${lifted.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_SECRET}` } })).status, 200);
  t.equal(await call(a, ISSUER, { jti: 'token-1' }), 401, 'that issuer\'s jti is revoked');
  t.equal(await call(a, ISSUER, { jti: 'token-2' }), 200, 'another of its tokens is not');
  t.equal(await call(b, OTHER, { jti: 'token-1' }), 401, 'the other issuer\'s key is still revoked by the list');
});

t.test('an actor revoked as ["<issuer>","<subject>"] is refused in the chains that issuer vouches for, not in another\'s', async (t) => {
  const w = await world();
  const OTHER = 'https://other.test.local';
  // Delegation off: nothing but the revocation refuses these chains.
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); r.delegation = { mode: 'off' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const call = async (act: Record<string, unknown>) => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ claims: { act } })) }); await r.text(); return r.status; };
  const revoked = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: JSON.stringify([ISSUER, 'spiffe://tools/bad']), reason: 'compromised' }) });
  t.equal(revoked.status, 201);
  await revoked.text();
  t.equal(await call({ sub: 'spiffe://tools/bad' }), 401, 'a level without iss: vouched for by the token\'s issuer');
  const refused = dg.seen.at(-1)!;
  t.equal(refused.decision?.reason, 'credential-revoked');
  t.match(refused.decision!.detail, /^an actor in this token's delegation chain was revoked/);
  t.equal(await call({ sub: 'spiffe://tools/a', act: { sub: 'spiffe://tools/bad', iss: ISSUER } }), 401, 'an inner level of that issuer');
  t.equal(await call({ sub: 'spiffe://tools/bad', iss: OTHER }), 200, 'the same sub vouched for by another issuer is not revoked');
  t.equal(await call({ sub: 'spiffe://tools/a' }), 200, 'a chain without it passes');
  // An iss the rules do not trust vouches for nobody: the token's issuer's consumer of that
  // name is weighed too, as the quarantine check weighs it (before: forwarded, the revoked
  // agent acting on by naming any other iss).
  t.equal(await call({ sub: 'spiffe://tools/bad', iss: 'https://attacker.example' }), 401, 'named by an untrusted iss: still the revoked agent');
  t.equal(await call({ sub: 'spiffe://tools/a', act: { sub: 'spiffe://tools/bad', iss: 'https://attacker.example' } }), 401, 'at an inner level too');
});

t.test('one journal, one writer: a second driftguard on it is refused before it rewrites it; a stale lock is taken over; a replaced file is not written to', async (t) => {
  const w = await world();
  t.teardown(() => w.close());
  const dir = mkdtempSync(join(tmpdir(), 'dg-journal-lock-'));
  const journal = join(dir, 'revocations.journal');
  const rules = writeRules(w.rules((r) => { r.revocation = { journal }; }), dir);
  // The first, a real process: the lock holds its pid.
  const first = await runDriftguard(rules, ['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
  t.teardown(() => first.kill());
  const revoke = async (admin: string, value: string) => {
    const r = await fetch(`${admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'task', value, reason: 'test' }) });
    await r.text();
    return r.status;
  };
  t.equal(await revoke(first.admin, 'before'), 201);
  t.match(readFileSync(`${journal}.lock`, 'utf8'), new RegExp(`^${first.child.pid} \\d+\n$`), 'the lock names the writer: pid and start time');
  // Before: the second start put its compacted copy in place of the file, and the first's
  // later revocations went to the unlinked one, lost at the next start.
  await t.rejects(startLifecycle({ file: rules }), { name: 'RulesError', message: new RegExp(`revocation\\.journal: cannot be written: in use by process ${first.child.pid}`) });
  t.equal(await revoke(first.admin, 'after'), 201);
  t.match(readFileSync(journal, 'utf8'), /"value":"before"[^]*"value":"after"/, 'both in the file the next start reads');
  // Replaced under it (by hand, by a tool): refused, not acknowledged into a file nobody reads.
  writeFileSync(`${journal}.new`, '');
  renameSync(`${journal}.new`, journal);
  t.equal(await revoke(first.admin, 'lost'), 500, 'a replaced journal is not written to');
  first.child.kill('SIGTERM');
  t.equal((await first.exited).code, 0);
  t.notOk(existsSync(`${journal}.lock`), 'the lock goes with its process');
  // A lock left by a process that is gone (killed), or whose pid another process has now (a
  // restart, in a pod sharing its process namespace): taken over.
  const other = spawn('sleep', ['30']);
  t.teardown(() => other.kill());
  for (const [holder, what] of [['2147483646 5', 'nobody'], [`${other.pid} 1`, 'a process started at another time']]) {
    writeFileSync(`${journal}.lock`, `${holder}\n`);
    const next = await startLifecycle({ file: rules });
    t.match(readFileSync(`${journal}.lock`, 'utf8'), new RegExp(`^${process.pid} `), `a lock held by ${what} is taken over`);
    // Two in one process are refused as well: the first's close must not free the second's lock.
    await t.rejects(startLifecycle({ file: rules }), { name: 'RulesError', message: /cannot be written: in use by this process/ });
    await next.close();
    t.notOk(existsSync(`${journal}.lock`), 'released at close');
  }
});

t.test('a write with an unnamed credential is recorded by its line, never by a hash of the secret (GET /revocations needs no credential)', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-unnamed-'));
  const file = join(dir, 'admin-credentials');
  // A guessable one (16 characters, the fewest taken): a hash of it shown would be tested offline.
  const weak = 'oncall42oncall42';
  writeFileSync(file, `# operators\noncall ${ADMIN_SECRET}\n${weak}\n`);
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: file }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const made = await revoke(dg.admin, { kind: 'jti', value: 'x', reason: 'y' }, weak);
  t.equal(made.status, 201);
  await made.text();
  const listed = await (await fetch(`${dg.admin}/revocations`)).text();
  t.match(JSON.parse(listed).revocations[0].by, 'credential on line 3');
  const digest = createHash('sha256').update(weak).digest('hex');
  for (const text of [listed, JSON.stringify(dg.logs)]) {
    t.notOk(text.includes(digest.slice(0, 8)), 'no part of the secret\'s hash');
    t.notOk(text.includes(weak), 'nor the secret');
  }
});

t.test('a revoked kid revokes the key: a token naming the other kid of a key the set lists twice, or none, is refused, however the twin writes the key', async (t) => {
  // The same key's text as written, or an RSA modulus with a leading zero octet (RFC 7518
  // §6.3.1.1: some libraries write one; WebCrypto imports it as the same key): the second was
  // taken for another key, and a token naming its kid, or none, went through.
  const leadingZero = (jwk: Record<string, unknown>): Record<string, unknown> => ({ ...jwk, n: Buffer.concat([Buffer.alloc(1), Buffer.from(jwk.n as string, 'base64url')]).toString('base64url') });
  for (const [alg, leaked, twinOf] of [['ES256', 'es-leaked', (jwk: Record<string, unknown>) => ({ ...jwk })], ['RS256', 'rs-leaked', leadingZero]] as const) {
    for (const alias of [`${alg}-alias`, undefined]) {
      await t.test(`${alg}: ${alias === undefined ? 'a kid-less twin listed first' : 'a second kid'}`, async (t) => {
        const key = await testKey(alg, leaked);
        const up = await upstream();
        const twin: Record<string, unknown> = twinOf(key.publicJwk as Record<string, unknown>);
        if (alias) twin.kid = alias; else delete twin.kid;
        // The same key twice (an issuer publishing a key under a thumbprint kid and a legacy one),
        // the twin first: a token without kid is verified by the first entry that fits.
        const keys = await jwksServer({ keys: [twin, key.publicJwk] });
        const dir = mkdtempSync(join(tmpdir(), 'dg-kid-'));
        const dg = await startLifecycle(baseRules(up.origin, keys.url, (r) => { r.revocation = { adminCredentialFile: adminFile(dir), journal: join(dir, 'journal') }; }), { dir });
        t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
        const other = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09', header: { kid: alias } });
        t.equal((await fetch(`${dg.url}/items/1`, { headers: bearer(other) }).then(async (r) => { await r.text(); return r.status; })), 200, 'before the revocation: forwarded');
        t.equal((await revoke(dg.admin, { kind: 'kid', value: leaked, reason: 'key leaked' })).status, 201);
        const named = await fetch(`${dg.url}/items/1`, { headers: bearer(await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' })) });
        await problem(t, named, 'credential-revoked', 401);
        // The key's other entry too, for a token in the verified-token cache.
        await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(other) }), 'credential-revoked', 401);
        t.equal(up.seen.length, 1, 'only the request before the revocation reached the upstream');
      });
    }
  }
});
