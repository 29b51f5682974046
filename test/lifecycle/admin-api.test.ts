// The lifecycle admin API as an operator reads and writes it: what GET /consumers,
// GET /revocations and GET /quarantine show, and what POST and DELETE /revocations answer.

import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRules, RulesError } from '../../proxy/rules/load.ts';
import { AGENT, writeRules } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';
import { world, startLifecycle, bearer, trustAlso } from './support.ts';
import { matchEach } from '../support/lists.ts';

const OTHER = 'https://other.test.local';

async function post(admin: string, body: Record<string, unknown>, secret?: string): Promise<Response> {
  return fetch(`${admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json', ...(secret !== undefined ? { authorization: `Bearer ${secret}` } : {}) }, body: JSON.stringify(body) });
}

/** The status of a revocation written with `secret`. */
async function writeWith(admin: string, secret: string): Promise<number> {
  const r = await post(admin, { kind: 'jti', value: 'x', reason: 'y' }, secret);
  await r.text();
  return r.status;
}

/** Rules naming an admin credential file that holds `text`, and the error loading them gives. */
async function credentialFileRefused(t: Test, text: string) {
  const w = await world();
  t.teardown(() => w.close());
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-cred-'));
  const file = join(dir, 'admin-credentials');
  writeFileSync(file, text);
  const rules = w.rules((r) => { r.revocation = { adminCredentialFile: file }; });
  const err = t.throws(() => loadRules(writeRules(rules, dir))) as RulesError;
  t.ok(err instanceof RulesError);
  return { dir, file, rules, err };
}

t.test('GET /consumers lists every subject revocation that refuses a consumer, however it is spelled', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const call = async (iss: string, sub: string) => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub, iss })) }); await r.text(); return r.status; };
  t.equal(await call(OTHER, 'client-7'), 200);
  t.equal(await call(OTHER, 'client-8'), 200);
  t.equal(await call(OTHER, 'client-9'), 200);
  const revoke = async (value: string) => { const r = await post(dg.admin, { kind: 'subject', value, reason: 'leaked' }); await r.text(); return r.status; };
  t.equal(await revoke('client-7'), 201, 'a plain subject: from every issuer');
  t.equal(await revoke(`["${OTHER}", "client-8"]`), 201, 'a pair written with a space');
  t.equal(await revoke(JSON.stringify([ISSUER, AGENT])), 201, 'a registered consumer by its issuer and subject');
  t.equal(await revoke(JSON.stringify([ISSUER, 'client-9'])), 201, 'another issuer\'s client-9');
  t.equal(await call(OTHER, 'client-7'), 401);
  t.equal(await call(OTHER, 'client-8'), 401);
  t.equal(await call(OTHER, 'client-9'), 200, 'this issuer\'s client-9 is not revoked');
  const listed = await (await fetch(`${dg.admin}/consumers`)).json() as { consumers: { subject: string; revocations: { value: string }[] }[] };
  const of = (subject: string) => listed.consumers.find((c) => c.subject === subject)?.revocations.map((r) => r.value);
  t.same(of(JSON.stringify([OTHER, 'client-7'])), ['client-7']);
  t.same(of(JSON.stringify([OTHER, 'client-8'])), [`["${OTHER}", "client-8"]`]);
  t.same(of(AGENT), [JSON.stringify([ISSUER, AGENT])]);
  t.same(of(JSON.stringify([OTHER, 'client-9'])), [], 'a revocation of another issuer\'s same subject is not listed');
});

t.test('a consumer with a subject of kilobytes can be revoked by subject; a value past 4096 characters is refused', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // A SPIFFE ID may be 2048 bytes.
  const sub = 'spiffe://test.local/ns/batch/sa/' + 'w'.repeat(2048 - 32);
  const tok = await w.token({ sub, scope: 'items.read' });
  const call = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); await r.text(); return r.status; };
  t.equal(await call(), 200, 'served');
  const made = await post(dg.admin, { kind: 'subject', value: sub, reason: 'compromised' });
  await made.text();
  t.equal(made.status, 201, 'revoked by its subject');
  t.equal(await call(), 401, 'and refused');
  const paired = await post(dg.admin, { kind: 'subject', value: JSON.stringify([ISSUER, sub]), reason: 'compromised' });
  await paired.text();
  t.equal(paired.status, 201, 'and as ["<issuer>","<subject>"]');
  const long = await post(dg.admin, { kind: 'subject', value: 'x'.repeat(4097), reason: 'compromised' });
  t.equal(long.status, 400);
  t.match((await long.json() as { detail: string }).detail, /value must be a non-empty string \(at most 4096 characters\)/);
});

t.test('a whole token pasted as the value is refused, never stored or quoted, and the answer says what to revoke', async (t) => {
  const w = await world();
  const journal = join(mkdtempSync(join(tmpdir(), 'dg-pasted-')), 'journal.jsonl');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { journal }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const leaked = await w.token();
  const [header, payload, signature] = leaked.split('.') as [string, string, string];
  const { jti } = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { jti: string };
  const { kid } = JSON.parse(Buffer.from(header, 'base64url').toString()) as { kid: string };
  for (const [kind, value] of [['jti', leaked], ['subject', leaked], ['kid', `Bearer ${leaked}`], ['task', encodeURIComponent(`x ${leaked}`).replaceAll('.', '%2E')]]) {
    const res = await post(dg.admin, { kind, value, reason: 'leaked in a ticket' });
    const text = await res.text();
    t.equal(res.status, 400, `kind ${kind}: refused`);
    t.notOk(text.includes(signature), `kind ${kind}: the answer does not quote the token`);
    t.match(JSON.parse(text).detail, `value holds a whole token, not a ${kind}: driftguard never stores a token`);
  }
  // Told not to paste it as the value, the evidence: refused too.
  const evidence = await post(dg.admin, { kind: 'jti', value: jti, reason: `leaked in OPS-1: Bearer ${leaked}` });
  const evidenceText = await evidence.text();
  t.equal(evidence.status, 400, 'a token in the reason: refused');
  t.match(JSON.parse(evidenceText).detail, 'reason holds a whole token');
  t.notOk(evidenceText.includes(signature), 'the answer does not quote it');
  const told = (await (await post(dg.admin, { kind: 'jti', value: leaked, reason: 'leaked' })).json() as { detail: string }).detail;
  t.match(told, `kind jti, value "${jti}"`, 'the answer names its jti');
  t.match(told, `kind subject, value "${AGENT}"`, 'and its subject');
  t.match(told, `kind kid, value "${kid}"`, 'and its key id');
  t.same((await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: unknown[] }).revocations, [], 'nothing was revoked');
  t.notOk(JSON.stringify(dg.logs).includes(signature), 'no log line quotes it');
  let onDisk = '';
  try { onDisk = readFileSync(journal, 'utf8'); } catch { /* never written */ }
  t.notOk(onDisk.includes(signature), 'nor the journal');
  // What the answer named revokes it.
  const revoked = await post(dg.admin, { kind: 'jti', value: jti, reason: 'leaked' });
  await revoked.text();
  t.equal(revoked.status, 201);
  const after = await fetch(`${dg.url}/items/1`, { headers: bearer(leaked) });
  await after.text();
  t.equal(after.status, 401, 'the token is refused');
});

t.test('a retried POST /revocations answers 200 with the revocation in force, extended when it ends later; lifting it lifts it', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-retry-'));
  const journal = join(dir, 'journal');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { journal }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ claims: { task_id: 'ticket-4711' } });
  const call = async (url: string) => { const r = await fetch(`${url}/items/1`, { headers: bearer(tok) }); await r.text(); return r.status; };
  const inHours = (h: number) => new Date(Math.floor(Date.now() / 1000) * 1000 + h * 3_600_000).toISOString();
  const body = { kind: 'task', value: 'ticket-4711', reason: 'task finished', end: inHours(2) };
  const first = await post(dg.admin, body);
  t.equal(first.status, 201);
  const made = await first.json() as { id: string; end: string };
  const retried = await post(dg.admin, body); // curl retried after a timeout
  t.equal(retried.status, 200, 'the same revocation again: 200, not a second one');
  t.same(await retried.json(), made, 'answered with the one in force');
  const sooner = await post(dg.admin, { ...body, end: inHours(1), reason: 'again' });
  t.equal(sooner.status, 200);
  t.equal((await sooner.json() as { end: string }).end, made.end, 'an earlier end does not shorten it');
  const end = inHours(4);
  const later = await post(dg.admin, { ...body, end });
  t.equal(later.status, 200);
  const extended = await later.json() as { id: string; end: string };
  t.equal(extended.id, made.id, 'a later end extends it, same id');
  t.equal(extended.end, end);
  t.ok(dg.logs.some((l) => l.msg === 'revocation extended' && l.id === made.id), 'the extension is logged');
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: { id: string; end: string }[] };
  t.same(listed.revocations.map((r) => [r.id, r.end]), [[made.id, extended.end]], 'one revocation in force');
  t.equal(await call(dg.url), 401);
  // The extension survives a restart: the journal's later add of the same id replaces it.
  await dg.close();
  const again = await startLifecycle({ file: dg.file }, { dir });
  t.teardown(() => again.close());
  const replayed = await (await fetch(`${again.admin}/revocations`)).json() as { revocations: { id: string; end: string }[] };
  t.same(replayed.revocations.map((r) => [r.id, r.end]), [[made.id, extended.end]], 'replayed with its later end');
  t.ok(readFileSync(journal, 'utf8').includes(made.id));
  const lifted = await fetch(`${again.admin}/revocations/${made.id}`, { method: 'DELETE' });
  t.equal(lifted.status, 200);
  await lifted.text();
  t.equal(await call(again.url), 200, 'lifting the id answered lifts the revocation');
});

t.test('a subject pair posted again with other spacing is the same revocation', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { trustAlso(r, OTHER); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const first = await post(dg.admin, { kind: 'subject', value: JSON.stringify([OTHER, 'client-7']), reason: 'leaked' });
  t.equal(first.status, 201);
  const made = await first.json() as { id: string };
  const spaced = await post(dg.admin, { kind: 'subject', value: `["${OTHER}", "client-7"]`, reason: 'leaked' });
  t.equal(spaced.status, 200);
  t.equal((await spaced.json() as { id: string }).id, made.id);
  const plain = await post(dg.admin, { kind: 'subject', value: 'client-7', reason: 'leaked' });
  t.equal(plain.status, 201, 'the plain subject (every issuer) is another revocation');
  await plain.text();
});

t.test('a revocation that has ended is not lifted (404) nor counted in sources.admin.entries', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-admin-ended-'));
  const journal = join(dir, 'journal');
  let skew = 0;
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { journal }; }), { dir, now: () => Date.now() + skew });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const end = new Date(Date.now() + 3_600_000).toISOString();
  const made = await (await post(dg.admin, { kind: 'jti', value: 'j1', reason: 'r', end })).json() as { id: string };
  await (await post(dg.admin, { kind: 'jti', value: 'j2', reason: 'r', end })).text();
  skew = 2 * 3_600_000; // two hours later: both ended an hour ago
  const del = await fetch(`${dg.admin}/revocations/${made.id}`, { method: 'DELETE' });
  t.equal(del.status, 404, 'a revocation no longer in force is not "lifted"');
  await del.text();
  t.notOk(readFileSync(journal, 'utf8').includes('"op":"delete"'), 'and no lift is journaled');
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { sources: { admin: { entries: number } }; revocations: unknown[] };
  t.same(listed.revocations, []);
  t.equal(listed.sources.admin.entries, 0, 'the count agrees with the list');
});

t.test('GET /revocations, /quarantine and /consumers refuse a query parameter (400 naming it) rather than ignore it', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  for (const [path, name] of [['/revocations?limit=1', 'limit'], ['/quarantine?x=1', 'x'], ['/consumers?owner=team-billing', 'owner'], ['/consumers?subject', 'subject']] as const) {
    const res = await fetch(dg.admin + path);
    t.equal(res.status, 400, `${path}: 400`);
    t.match((await res.json() as { detail: string }).detail, `unknown parameter "${name}"`, 'naming the parameter');
  }
  for (const path of ['/revocations', '/quarantine', '/consumers']) {
    const res = await fetch(dg.admin + path);
    await res.text();
    t.equal(res.status, 200, `${path} without parameters: 200`);
  }
});

t.test('POST and GET /revocations say revocation.mode, and the log says it: under off a 201 refuses nothing', async (t) => {
  for (const mode of ['off', 'audit', 'enforce'] as const) {
    const w = await world();
    const dg = await startLifecycle(w.rules((r) => { r.revocation = { mode }; }));
    const made = await post(dg.admin, { kind: 'subject', value: AGENT, reason: 'compromised' });
    t.equal(made.status, 201);
    t.equal((await made.json() as { mode: string }).mode, mode, `${mode}: the 201 says the mode`);
    const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { mode: string };
    t.equal(listed.mode, mode, `${mode}: GET /revocations says it`);
    const line = dg.logs.find((l) => l.msg === 'revocation added');
    t.equal(line?.mode, mode, `${mode}: logged`);
    t.equal(line?.level, mode === 'enforce' ? 'info' : 'warn', 'a warning when nothing is refused');
    await dg.close(); await w.close();
  }
});

t.test('an admin credential line of more than two words (a trailing # comment) is refused at load and skipped, said, when the file changes', async (t) => {
  const SECRET = 's3cret-value-0123456789';
  const { dir, file, rules, err } = await credentialFileRefused(t, `# operators\noncall ${SECRET}   # rotated 2026-11-01\n`);
  t.match(err.message, /revocation\.adminCredentialFile: .*admin-credentials line 2: expected "name secret" or "secret"/, 'names the file and line');
  t.notMatch(err.message, SECRET, 'never the secret');
  t.notMatch(err.message, 'rotated');

  // Rewritten so after start (the file is read on every write): that line is no credential, the others work.
  writeFileSync(file, `oncall ${SECRET}\n`);
  const dg = await startLifecycle(rules, { dir });
  t.teardown(() => dg.close());
  writeFileSync(file, `oncall ${SECRET}\nbackup other-secret-0123456789 # spare\n`);
  const write = (secret: string) => writeWith(dg.admin, secret);
  t.equal(await write(SECRET), 201, 'a good line still works');
  t.equal(await write('other-secret-0123456789'), 401, 'the line with a comment is no credential');
  const warned = dg.logs.filter((l) => l.msg === 'admin credential file lines skipped: no write can use them');
  t.equal(warned.length, 1, 'said once');
  t.match(String(warned[0]?.problem), /admin-credentials line 2: expected "name secret" or "secret"/);
  t.notMatch(JSON.stringify(dg.logs), 'other-secret', 'never the secret');
});

t.test('an admin secret of fewer than 16 characters is refused at load and skipped, said, when the file changes', async (t) => {
  const SECRET = 's3cret-value-0123456789';
  // Both forms of a line: `name secret` and `secret`; 15 characters each, one short of the bound.
  const { dir, file, rules, err } = await credentialFileRefused(t, `oncall ${SECRET}\nbackup changeme-012345\nchangeme-543210\nlatin élève-mot-de-passe-2026\npass\u00a0word-0123456789abcdef\n`);
  t.match(err.message, /revocation\.adminCredentialFile: .*admin-credentials lines 2, 3: a secret of fewer than 16 characters.*admin-credentials lines 4, 5: a secret with a character other than visible ASCII/, 'names the file and lines, each for what is wrong (a no-break space is in a secret, not between a name and one)');
  t.notMatch(err.message, 'changeme', 'never the secret');
  t.notMatch(err.message, 'mot-de-passe');

  writeFileSync(file, `oncall ${SECRET}\n`);
  const dg = await startLifecycle(rules, { dir });
  t.teardown(() => dg.close());
  writeFileSync(file, `oncall ${SECRET}\nbackup changeme-012345\nbackup2 changeme-0123456\n`);
  const write = (secret: string) => writeWith(dg.admin, secret);
  t.equal(await write('changeme-012345'), 401, 'a secret one character short is no credential');
  t.equal(await write('changeme-0123456'), 201, 'one of 16 is');
  const warned = dg.logs.filter((l) => l.msg === 'admin credential file lines skipped: no write can use them');
  t.equal(warned.length, 1, 'said once');
  t.match(String(warned[0]?.problem), /admin-credentials line 2: a secret of fewer than 16 characters/);
  t.notMatch(JSON.stringify(dg.logs), 'changeme', 'never the secret');
});

t.test('refused admin writes are said in a warn line at most once a minute, with how many, never the credential sent', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-refused-'));
  writeFileSync(join(dir, 'admin'), 'oncall s3cret-oncall-0123456789\n');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: join(dir, 'admin') }; }), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const refuse = async (headers: Record<string, string>) => { const r = await fetch(`${dg.admin}/revocations/x`, { method: 'DELETE', headers }); await r.text(); return r.status; };
  t.equal(await refuse({ authorization: 'Bearer guess-0' }), 401);
  for (let i = 1; i < 50; i++) await refuse({ authorization: `Bearer guess-${i}` });
  t.equal(await refuse({ origin: 'http://evil.example', authorization: 'Bearer guess-x' }), 403);
  const lines = dg.logs.filter((l) => l.msg === 'admin writes refused');
  matchEach(t, lines, [{ level: 'warn', method: 'DELETE', path: '/revocations/x', status: 401, refused: 1, credentials: { 'not recognised': 1 } }], 'the first at once; the rest counted for the line at the end of the minute');
  t.equal(lines.length, 1, 'one line so far');
  t.notMatch(JSON.stringify(dg.logs), /guess-/, 'no credential quoted');
});

t.test('refused admin writes of a minute are said when it ends, and at the stop; no timer outlives the lifecycle', async (t) => {
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-refused-'));
  writeFileSync(join(dir, 'admin'), 'oncall s3cret-oncall-0123456789\n');
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { adminCredentialFile: join(dir, 'admin') }; }), { dir });
  t.teardown(async () => { await w.close(); });
  // The minute's timer, caught to be fired by hand (a minute is too long for a test).
  const realSetTimeout = globalThis.setTimeout;
  const minute: { fn: () => void; timer: NodeJS.Timeout }[] = [];
  (globalThis as { setTimeout: unknown }).setTimeout = (fn: () => void, ms?: number, ...rest: unknown[]) => {
    const timer = (realSetTimeout as (...a: unknown[]) => NodeJS.Timeout)(fn, ms, ...rest);
    if (ms !== undefined && ms > 50_000 && ms <= 60_000) minute.push({ fn, timer });
    return timer;
  };
  t.teardown(() => { globalThis.setTimeout = realSetTimeout; });
  const refuse = async (headers: Record<string, string>) => { const r = await fetch(`${dg.admin}/revocations/x`, { method: 'DELETE', headers }); await r.text(); };
  const said = () => dg.logs.filter((l) => l.msg === 'admin writes refused').map((l) => l.refused as number);
  for (let i = 0; i < 50; i++) await refuse({ authorization: `Bearer guess-${i}` });
  t.same(said(), [1], 'the first at once');
  t.equal(minute.length, 1, 'one timer for the rest of the minute');
  minute.shift()!.fn();
  t.same(said(), [1, 49], 'the rest when the minute ends');
  t.match(dg.logs.filter((l) => l.msg === 'admin writes refused').at(-1), { credentials: { 'not recognised': 49 } });
  for (let i = 0; i < 3; i++) await refuse({});
  globalThis.setTimeout = realSetTimeout;
  await dg.close();
  t.same(said(), [1, 49, 3], 'those of the last minute at the stop');
  t.equal((minute[0]?.timer as unknown as { _destroyed?: boolean })?._destroyed, true, 'its timer cleared');
  minute[0]?.fn();
  t.same(said(), [1, 49, 3], 'nothing said after the stop');
});
