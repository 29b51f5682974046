// Rules hot reload, in process: a real driftguard, a real upstream and JWKS on loopback, the
// rules file rewritten on disk and picked up by the directory watcher.

import t, { type Test } from 'tap';
import { writeFileSync, readFileSync, mkdtempSync, watch } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type { AddressInfo } from 'node:net';
import { stringify } from 'yaml';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, startTest, writeRules, AGENT } from '../support/driftguard.ts';
import { startDriftguard } from '../../proxy/server.ts';
import { noopObserver, type Observer } from '../../proxy/observe.ts';
import { reloader, SETTLE_MS, RETRY_MS, POLL_MS, type Reloader } from '../../proxy/reload.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { ALL_SCOPES } from '../core/world.ts';

async function until(what: string, cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function setup(t: Test) {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = baseRules(up.origin, keys.url);
  const dg = await startTest(rules);
  const logs: Record<string, unknown>[] = [];
  const reload: Reloader = reloader(dg.file, {}, dg.dg, (l) => logs.push(l));
  dg.dg.reloadStatus = reload.status;
  t.teardown(async () => { reload.close(); await dg.close(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  return { key, up, keys, rules, dg, reload, logs, tok };
}

/** Rules with one more public operation, GET /probe<n>: a change visible from outside. */
function withProbe(rules: Record<string, any>, n: number): Record<string, any> {
  const next = structuredClone(rules);
  next.contract.operations.push({ id: `probe${n}`, method: 'GET', path: `/probe${n}`, sensitivity: 'low', public: true });
  return next;
}

t.test('a valid change takes effect under load without failing a single request', async (t) => {
  const { rules, dg, reload, tok, logs } = await setup(t);
  const before = await fetch(`${dg.url}/probe4`);
  await before.text();
  t.not(before.status, 200, 'GET /probe4 is not an operation yet');

  let writing = true;
  const failures: string[] = [];
  let requests = 0;
  // Bounded load: 8 concurrent callers, each at most 2000 requests, until the writer is done.
  const worker = async (i: number) => {
    for (let n = 0; n < 2000 && writing; n++) {
      const path = i % 2 === 0 ? '/items/7' : '/status';
      try {
        const res = await fetch(`${dg.url}${path}`, { headers: { authorization: `Bearer ${tok}` } });
        await res.text();
        if (res.status !== 200) failures.push(`${path}: ${res.status}`);
      } catch (err) {
        failures.push(`${path}: ${(err as Error).message}`);
      }
      requests++;
    }
  };
  const workers = Array.from({ length: 8 }, (_, i) => worker(i));
  for (let n = 1; n <= 4; n++) {
    // Traffic before every change, so that each swap happens with requests in flight.
    await until(`traffic before change ${n}`, () => requests >= n * 25 || failures.length > 0);
    const succeeded = reload.status.succeeded;
    // Written in place, as an editor or `kubectl cp` would: the watcher must pick it up.
    writeFileSync(dg.file, stringify(withProbe(rules, n)));
    await until(`reload ${n}`, () => reload.status.succeeded > succeeded);
  }
  writing = false;
  await Promise.all(workers);

  t.same(failures, [], 'no request failed while the rules changed');
  t.ok(requests >= 100, `requests ran during the reloads (${requests})`);
  t.ok(reload.status.succeeded >= 4, 'every change was applied');
  t.equal(reload.status.lastResult, 'succeeded');
  const after = await fetch(`${dg.url}/probe4`);
  await after.text();
  t.equal(after.status, 200, 'the new operation is served');
  t.ok(logs.some((l) => l.msg === 'rules reloaded' && l.trigger === 'file change'));
});

t.test('a reload that leaves the identity section as it was keeps the verified tokens; one that changes it verifies them again', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = baseRules(up.origin, keys.url);
  const cached: (boolean | undefined)[] = [];
  const observer: Observer = { begin: (ctx) => ({ ...noopObserver.begin(ctx), decided() { cached.push(ctx.credential?.cached); } }) };
  const dg = await startTest(rules, { observer });
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const get = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } }); await r.text(); return r.status; };
  t.same([await get(), await get()], [200, 200]);
  // A change elsewhere (the contract): before, every reload emptied the cache.
  await dg.dg.swap(loadRules(writeRules(withProbe(rules, 1))));
  t.equal(await get(), 200);
  // A change to the identity section: verified again under it.
  const skewed = withProbe(rules, 1);
  skewed.identity.clockSkew = '10s';
  await dg.dg.swap(loadRules(writeRules(skewed)));
  t.equal(await get(), 200);
  t.same(cached, [false, true, true, false], 'a miss, a hit, a hit across the contract\'s reload, a miss after the identity\'s');
});

t.test('a file written in two steps is applied once it settles, never its first half', async (t) => {
  const { rules, dg, reload } = await setup(t);
  // The first write is valid rules on its own (as a prefix of a file often is); the second,
  // 400 ms later, is the file the writer meant.
  writeFileSync(dg.file, stringify(withProbe(rules, 5)));
  await new Promise((r) => setTimeout(r, 400));
  writeFileSync(dg.file, stringify(withProbe(rules, 6)));
  await until('the reload', () => reload.status.succeeded >= 1);
  await new Promise((r) => setTimeout(r, SETTLE_MS + 300));
  t.equal(reload.status.succeeded, 1, 'one reload, of the finished file (before: the first half too, 150 ms after it was written)');
  const first = await fetch(`${dg.url}/probe5`);
  await first.text();
  t.not(first.status, 200, 'the first half never served');
  const meant = await fetch(`${dg.url}/probe6`);
  await meant.text();
  t.equal(meant.status, 200);
});

t.test('an invalid change is rejected, the old rules keep serving, /readyz reports it', async (t) => {
  const { rules, dg, reload, tok, logs } = await setup(t);
  const original = readFileSync(dg.file, 'utf8');
  const hash = dg.dg.generation.rules.hash;

  // Valid YAML, one valid new operation, one invalid field: nothing of it may apply.
  const bad = withProbe(rules, 1);
  bad.contract.operations[1].method = 'FETCH';
  writeFileSync(dg.file, stringify(bad));
  await until('the rejection', () => reload.status.failed === 1);

  t.equal(dg.dg.generation.rules.hash, hash, 'the rules in force did not change');
  const probe = await fetch(`${dg.url}/probe1`);
  await probe.text();
  t.not(probe.status, 200, 'the valid half of the invalid file was not applied');
  const item = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  await item.text();
  t.equal(item.status, 200, 'the old rules keep serving');

  const ready = await fetch(`${dg.admin}/readyz`);
  const body = await ready.json() as any;
  t.equal(ready.status, 200, 'still ready: the last good rules are in force');
  t.equal(body.rules, hash);
  t.equal(body.reload.failed, 1);
  t.equal(body.reload.lastResult, 'failed');
  t.match(body.reload.lastError, `${dg.file}:`, 'the error names the file');
  t.match(body.reload.lastError, /contract\.operations\[1\]\.method/, 'and the field');
  t.ok(logs.some((l) => l.level === 'error' && String(l.error).includes('contract.operations[1].method')), 'and is logged');

  // A cross-field error (found after the schema passed) is rejected the same way.
  const duplicate = withProbe(rules, 2);
  duplicate.contract.operations.push({ ...duplicate.contract.operations.at(-1), path: '/probe2b' });
  writeFileSync(dg.file, stringify(duplicate));
  await until('the second rejection', () => reload.status.failed === 2);
  t.match(reload.status.lastError, /operation id "probe2" is used twice/);
  t.equal(dg.dg.generation.rules.hash, hash);

  // Rolled back to the rules in force: nothing to swap, and the error is no longer current.
  writeFileSync(dg.file, original);
  const r = await reload.reload('test');
  t.same(r, { changed: false, hash });
  const again = await (await fetch(`${dg.admin}/readyz`)).json() as any;
  t.notOk('lastError' in again.reload, 'a rolled-back file clears the error');
  t.equal(again.reload.failed, 2, 'the counters keep the history');
});

t.test('a rejected reload with many problems reports the first 20 and how many more: in the log, POST /reload\'s answer and /readyz', async (t) => {
  const { rules, dg, logs, reload } = await setup(t);
  // A generated registry with one systematic mistake: a problem per entry.
  const bad = structuredClone(rules);
  for (let i = 0; i < 500; i++) bad.consumers.registry.push({ subject: `spiffe://test.local/ns/team/sa/agent-${i}`, kind: 'robot' });
  writeFileSync(dg.file, stringify(bad));
  // What POST /reload answers (proxy/run.ts).
  const answer = await reload.reload('test') as { error: string };
  const lines = answer.error.split('\n');
  t.equal(lines.length, 21, 'twenty problems and one more line');
  t.match(lines[0], /consumers\.registry\[\d+\]\.kind/);
  t.match(lines[20], /: \(top level\): and 480 more problems$/);
  const ready = await (await fetch(`${dg.admin}/readyz`)).json() as any;
  t.equal(ready.reload.lastError, answer.error, '/readyz carries the same, at every probe');
  t.equal(logs.find((l) => l.level === 'error')?.error, answer.error, 'and so does the log line');
});

t.test('a reload\'s clientIdle reaches the keep-alive connections already open, not only new ones', async (t) => {
  const { rules, dg, reload } = await setup(t);
  const withIdle = (idle: string) => {
    const next = structuredClone(rules);
    next.proxy.timeouts = { ...next.proxy.timeouts, response: '500ms', clientIdle: idle };
    next.contract.operations.push({ id: 'idleUpload', method: 'PUT', path: '/idle-upload', sensitivity: 'low', public: true });
    return next;
  };
  writeFileSync(dg.file, stringify(withIdle('1h')));
  await reload.reload('test');
  t.equal(dg.dg.generation.rules.proxy.timeouts.clientIdleMs, 3_600_000);
  const { connect } = await import('node:net');
  // Opened under a clientIdle of an hour, a connection that then goes silent mid-request.
  const socket = connect(Number(new URL(dg.url).port), '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  writeFileSync(dg.file, stringify(withIdle('1s')));
  await reload.reload('test');
  t.equal(dg.dg.generation.rules.proxy.timeouts.clientIdleMs, 1_000);
  // Held to the hour, it would outlast the test.
  let answer = '';
  socket.on('data', (b: Buffer) => { answer += b.toString('latin1'); });
  // A stalled upload: half its body, then nothing. The upstream waits for the rest (its answer
  // and so the response timeout wait for the request to be sent), and only clientIdle ends it.
  socket.write('PUT /idle-upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello');
  await closed;
  t.notMatch(answer, /^HTTP\/1\.1 200 /, 'not answered: the silence was what ended it');
  t.pass('closed by the new clientIdle');
});

/** `rules` with `timeouts` in proxy.timeouts, written over the rules file and reloaded. */
async function reloadTimeouts(file: string, reload: Reloader, rules: Record<string, any>, timeouts: Record<string, string>): Promise<Record<string, any>> {
  const next = structuredClone(rules);
  next.proxy.timeouts = { ...next.proxy.timeouts, ...timeouts };
  writeFileSync(file, stringify(next));
  await reload.reload('test');
  return next;
}

t.test('a connection idle between requests at a reload keeps Node\'s keep-alive close, not the reload\'s clientIdle', async (t) => {
  const { rules, dg, reload } = await setup(t);
  const next = await reloadTimeouts(dg.file, reload, rules, { clientIdle: '1h' });
  t.equal(dg.dg.generation.rules.proxy.timeouts.clientIdleMs, 3_600_000);
  const { connect } = await import('node:net');
  const socket = connect(Number(new URL(dg.url).port), '127.0.0.1');
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  let got = '';
  const answered = new Promise<void>((resolve) => socket.on('data', (b: Buffer) => { got += b.toString('latin1'); if (got.includes('\r\n\r\n')) resolve(); }));
  socket.write('GET /status HTTP/1.1\r\nhost: x\r\n\r\n');
  await answered;
  // Idle between requests now; any reload (the same clientIdle of an hour).
  writeFileSync(dg.file, stringify(withProbe(next, 9)));
  await reload.reload('test');
  // Node's keep-alive close (5 s, and 1 s more) ends it; given the hour, it outlasted the test.
  await closed;
  t.pass('closed by the keep-alive timeout');
});

t.test('proxy.timeouts.clientKeepAlive keeps a connection idle between requests for the next one, past Node\'s 5 s', async (t) => {
  const { rules, dg, reload } = await setup(t);
  // As a caller that pools connections (Go keeps them 90 s): a request, a pause, another on the same connection.
  await reloadTimeouts(dg.file, reload, rules, { clientKeepAlive: '30s' });
  t.equal(dg.dg.generation.rules.proxy.timeouts.clientKeepAliveMs, 30_000);
  const { Agent } = await import('node:http');
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const { request } = await import('node:http');
  const sockets = new Set<unknown>();
  const send = () => new Promise<number>((resolve, reject) => {
    const req = request(`${dg.url}/status`, { agent }, (res) => { sockets.add(res.socket); res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.end();
  });
  t.not(await send(), 0);
  await new Promise((r) => setTimeout(r, 6_500));
  t.not(await send(), 0, 'the second request, after 6.5 s idle');
  t.equal(sockets.size, 1, 'on the same connection: still open (Node closes at 5 s, and 1 s more)');
});

t.test('a change to the listeners is refused: they cannot move without a restart', async (t) => {
  const { rules, dg, reload } = await setup(t);
  const hash = dg.dg.generation.rules.hash;
  const next = structuredClone(rules);
  next.proxy.listen = '127.0.0.1:1';
  writeFileSync(dg.file, stringify(next));
  const r = await reload.reload('test');
  t.equal(r.changed, false);
  t.match(r.error, /proxy\.listen: cannot change without a restart/);
  const line = readFileSync(dg.file, 'utf8').split('\n').findIndex((l) => l.trimStart().startsWith('listen:')) + 1;
  t.ok(line > 0 && r.error!.startsWith(`${dg.file}:${line}:`), `FILE:LINE as for any rules problem: ${r.error}`);
  t.equal(dg.dg.generation.rules.hash, hash);
});

t.test('a new issuer whose keys cannot be fetched is refused; the old rules keep serving', async (t) => {
  const { rules, dg, reload, tok } = await setup(t);
  const hash = dg.dg.generation.rules.hash;
  const down = await jwksServer({ keys: [] });
  down.down = true;
  t.teardown(() => down.close());
  const next = structuredClone(rules);
  next.identity.issuers.push({ ...next.identity.issuers[0], issuer: 'https://other.test.local', jwks: { url: down.url, timeout: '1s' } });
  // Two OAuth issuers can both put any sub in a token: each registered consumer names its own.
  for (const c of next.consumers.registry) c.issuer = next.identity.issuers[0].issuer;
  writeFileSync(dg.file, stringify(next));
  const r = await reload.reload('test');
  t.equal(r.changed, false);
  t.match(r.error, /identity\.issuers\[1\]\.jwks: JWKS .*HTTP 503/);
  // The second issuer's jwks: the second `jwks:` key of the file.
  const lines = readFileSync(dg.file, 'utf8').split('\n');
  const line = lines.findIndex((l, i) => l.trimStart().startsWith('jwks:') && lines.slice(0, i).some((m) => m.trimStart().startsWith('jwks:'))) + 1;
  t.ok(line > 0 && r.error!.startsWith(`${dg.file}:${line}:`), `FILE:LINE as for any rules problem: ${r.error}`);
  t.equal(dg.dg.generation.rules.hash, hash);
  const item = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  await item.text();
  t.equal(item.status, 200);
  t.ok(dg.dg.ready, 'still ready');
});

t.test('a reload refused because a new issuer\'s keys could not be fetched is tried again until they can; a bad file is not', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const down = await jwksServer(jwks(key));
  down.down = true;
  const rules = baseRules(up.origin, keys.url);
  const dg = await startTest(rules);
  const logs: Record<string, unknown>[] = [];
  const reload = reloader(dg.file, {}, dg.dg, (l) => logs.push(l), 300);
  t.teardown(async () => { reload.close(); await dg.close(); await up.close(); await keys.close(); await down.close(); });
  const hash = dg.dg.generation.rules.hash;
  const next = structuredClone(rules);
  next.identity.issuers.push({ ...next.identity.issuers[0], issuer: 'https://other.test.local', jwks: { url: down.url, timeout: '1s' } });
  for (const c of next.consumers.registry) c.issuer = next.identity.issuers[0].issuer;
  writeFileSync(dg.file, stringify(next));
  const r = await reload.reload('test');
  t.match(r.error, /identity\.issuers\[1\]\.jwks/);
  t.match(logs.at(-1), { level: 'error', retryInSeconds: 0.3 }, 'the rejection says it will be tried again');
  await until('a second try', () => down.fetches >= 2);
  t.equal(dg.dg.generation.rules.hash, hash, 'still refused while the keys are down');
  down.down = false;
  await until('the retry to load the rules', () => dg.dg.generation.rules.hash !== hash);
  t.match(logs.find((l) => l.msg === 'rules reloaded'), { trigger: 'retry' });
  t.equal(reload.status.lastError, undefined, 'the error is cleared');

  // A file with a problem of its own is not tried again: only a change or an operator can fix it.
  writeFileSync(dg.file, 'proxy: [\n');
  const bad = await reload.reload('test');
  t.ok(bad.error);
  t.notOk('retryInSeconds' in logs.at(-1)!, 'not to be tried again');
  const rejected = logs.filter((l) => l.level === 'error').length;
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(logs.filter((l) => l.level === 'error').length, rejected, 'no retry');
});

t.test('an issuer whose algorithms change gets its keys loaded again: refused while none fits, taken once one does', async (t) => {
  const { rules, dg, reload, keys, key, tok } = await setup(t);
  const rsa = await testKey('RS256');
  const next = structuredClone(rules);
  next.identity.issuers[0].algorithms = ['RS256'];
  writeFileSync(dg.file, stringify(next));
  // The key set held only the EC key: kept, it would have refused every refresh without an RSA key.
  const refused = await reload.reload('test');
  t.equal(refused.changed, false, 'refused: the key set has no key for RS256');
  t.match(refused.error, /identity\.issuers\[0\]\.jwks: .*RS256/);
  const still = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(still.status, 200, 'the old rules keep serving');
  await still.text();
  keys.body = jwks(rsa, key);
  const fetches = keys.fetches;
  const taken = await reload.reload('test');
  t.equal(taken.changed, true, taken.error ?? 'reloaded');
  t.ok(keys.fetches > fetches, 'the keys were fetched again for the new algorithms');
  const byRsa = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${await token({ key: rsa, sub: AGENT, scope: 'items.read', contract: '2026-09' })}` } });
  t.equal(byRsa.status, 200);
  await byRsa.text();
  const byEc = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' })}` } });
  t.equal(byEc.status, 401, 'ES256 is no longer accepted');
  await byEc.text();
});

t.test('an unchanged issuer\'s failing refresh does not block an unrelated change', async (t) => {
  const { rules, dg, reload, keys } = await setup(t);
  keys.down = true;
  const fetches = keys.fetches;
  writeFileSync(dg.file, stringify(withProbe(rules, 1)));
  const r = await reload.reload('test');
  t.equal(r.changed, true, r.error ?? 'reloaded');
  t.equal(keys.fetches, fetches, 'the shared key set was not refetched by the reload');
  t.ok(dg.dg.ready, 'the kept keys keep driftguard ready');
});

t.test('only the rules file (or the ConfigMap ..data link) triggers a reload, not other files beside it', async (t) => {
  const { dg, reload: first, logs } = await setup(t);
  first.close();
  // The file on disk is now invalid, but nothing has told the watcher yet.
  writeFileSync(dg.file, 'proxy: [');
  const reload = reloader(dg.file, {}, dg.dg, (l) => logs.push(l));
  t.teardown(() => reload.close());
  // A decision log written next to the rules must not reload: a reload would read the
  // invalid file and count a failure.
  const beside = `${dg.file.replace(/rules\.yaml$/, '')}decisions.log`;
  for (let i = 0; i < 5; i++) { writeFileSync(beside, `line ${i}\n`, { flag: 'a' }); await new Promise((r) => setTimeout(r, 40)); }
  await new Promise((r) => setTimeout(r, 400));
  t.equal(reload.status.failed, 0, 'writes to another file in the directory do not reload');
  // The rules file itself does.
  writeFileSync(dg.file, 'proxy: [ ');
  await until('the reload of the rules file', () => reload.status.failed === 1);
  t.equal(reload.status.failed, 1);
});

t.test('a file the refused rules named, written after them beside them, gets them reloaded: a key set, a revocation list', async (t) => {
  const { rules, dg, reload, key } = await setup(t);
  const dir = dirname(dg.file);
  // The operator writes the rules first, then the files they name: the rules are refused for
  // the missing files; each file as it comes is a change, until the rules load.
  const next = structuredClone(rules);
  next.identity.issuers[0].jwks = { file: 'later-jwks.json' };
  next.revocation = { file: 'later-revoked.yaml' };
  writeFileSync(dg.file, stringify(next));
  await until('the refusal', () => reload.status.failed === 1);
  t.match(reload.status.lastError, /later-jwks\.json: ENOENT/);
  writeFileSync(join(dir, 'later-jwks.json'), JSON.stringify(jwks(key)));
  await until('a second refusal, for the list alone', () => reload.status.failed === 2, 10_000);
  t.notMatch(reload.status.lastError, /later-jwks/, 'the key set was read this time');
  t.match(reload.status.lastError, /later-revoked\.yaml/);
  writeFileSync(join(dir, 'later-revoked.yaml'), 'revocations: []\n');
  await until('the rules loaded', () => reload.status.succeeded === 1, 10_000);
  t.notOk('lastError' in reload.status, 'nothing left on /readyz');
  t.equal(dg.dg.generation.rules.identity.issuers[0]!.jwks.kind, 'file');
});

t.test('a rules file that is a link to a file beside it reloads when that file is edited in place', async (t) => {
  const { rules, dg, reload, logs } = await setup(t);
  const { renameSync, symlinkSync } = await import('node:fs');
  // rules.yaml -> rules-v2.yaml, a deploy tool's layout: an edit of rules-v2.yaml is named so.
  const real = join(dirname(dg.file), 'rules-v2.yaml');
  renameSync(dg.file, real);
  symlinkSync('rules-v2.yaml', dg.file);
  // The rename and the link are changes of rules.yaml: seen, settled, found unchanged. Only
  // then the edit, so that it is not read by that settling.
  await until('the link to be seen', () => logs.some((l) => l.msg === 'rules unchanged' && l.trigger === 'file change'), 10_000);
  const before = reload.status.succeeded;
  writeFileSync(real, stringify(withProbe(rules, 7)));
  await until('the edit of the link\'s target to be applied', () => reload.status.succeeded > before, 10_000);
  const probe = await fetch(`${dg.url}/probe7`);
  await probe.text();
  t.equal(probe.status, 200, 'the new operation is in force');
});

t.test('a JWKS file next to the rules reloads when it changes, with the rules file named by a relative path too', async (t) => {
  const up = await upstream();
  const [key, rotated] = [await testKey('ES256'), await testKey('ES256')];
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-'));
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(jwks(key)));
  const rules = baseRules(up.origin, 'http://127.0.0.1:9/unused', (r) => { r.identity.issuers[0].jwks = { file: 'jwks.json' }; });
  // As `driftguard run --config rules.yaml` names it from its directory: the watcher compared
  // the relative directory with the JWKS file's absolute one, and never reloaded for it.
  const file = relative(process.cwd(), writeRules(rules, dir));
  const dg = startDriftguard(loadRules(file), { log: () => {} });
  await dg.listening;
  const url = `http://127.0.0.1:${(dg.traffic.address() as AddressInfo).port}`;
  const logs: Record<string, unknown>[] = [];
  const reload = reloader(file, {}, dg, (l) => logs.push(l));
  t.teardown(async () => { reload.close(); await dg.close(); await up.close(); });
  const tok = await token({ key: rotated, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const call = async () => { const r = await fetch(`${url}/items/7`, { headers: { authorization: `Bearer ${tok}` } }); await r.text(); return r.status; };
  t.equal(await call(), 401, 'the rotated key is not trusted yet');
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(jwks(key, rotated)));
  await until('the reload for the JWKS file', () => reload.status.succeeded === 1);
  t.equal(await call(), 200, 'the rotated key is trusted');
  t.match(logs.find((l) => l.msg === 'rules reloaded'), { trigger: 'file change', changed: 'a JWKS file' }, 'the log says what changed: the rules hash did not');
});

t.test('once closed (driftguard draining), a reload changes nothing', async (t) => {
  const { rules, dg, reload } = await setup(t);
  const hash = dg.dg.generation.rules.hash;
  writeFileSync(dg.file, stringify(withProbe(rules, 1)));
  reload.close();
  // Before: SIGHUP during a drain built and swapped in a new generation that nothing closed.
  const r = await reload.reload('SIGHUP');
  t.equal(r.changed, false);
  t.match(r.error, /shutting down/);
  t.equal(dg.dg.generation.rules.hash, hash, 'the rules in force are the same');
});

/**
 * A request still being decided when a reload (`change` to the rules) replaces its pool, which
 * is then closed at once, as if its decision had taken the 30 s the pool is kept open.
 */
async function decidedAcrossReload(t: Test, change: (rules: Record<string, any>) => void) {
  const [key, rotated] = [await testKey('ES256'), await testKey('ES256')];
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = baseRules(up.origin, keys.url, (r) => { Object.assign(r.identity.issuers[0].jwks, { cooldown: '1s', timeout: '5s' }); });
  const dg = await startTest(rules);
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  // A token signed by a key the JWKS publishes only now, and late: its decision waits for the keys.
  await new Promise((r) => setTimeout(r, 1_100));
  keys.body = jwks(key, rotated);
  keys.delayMs = 800;
  const tok = await token({ key: rotated, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09' });
  const before = dg.dg.generation;
  const fetches = keys.fetches;
  const answer = fetch(dg.url + '/items/1', { headers: { authorization: `Bearer ${tok}` } });
  // Its decision waits for the keys (800 ms) from when the key server has the fetch: the reload
  // and the close land in that time. (A fixed 200 ms ate into it on a busy machine, or came first.)
  await until('the key fetch for its token', () => keys.fetches > fetches, 10_000);
  change(rules);
  writeFileSync(dg.file, stringify(rules));
  await dg.dg.swap(loadRules(dg.file));
  t.not(dg.dg.generation.forwarder, before.forwarder, 'the reload made a new pool');
  await before.forwarder.close();
  return { up, res: await answer };
}

t.test('a request decided after a reload closed its pool goes out on the pool in force, not as a 502', async (t) => {
  // A reload that changes proxy settings builds a new pool and closes the old one 30 s later.
  const { up, res } = await decidedAcrossReload(t, (rules) => { rules.proxy.timeouts.response = '3s'; });
  t.equal(res.status, 200, 'forwarded (it was a 502, upstream-unavailable, UND_ERR_DESTROYED)');
  t.equal(up.seen.length, 1, 'the upstream got it');
});

t.test('a request decided after a reload that moved proxy.upstream closed its pool is not sent to the new upstream: 502, sent nowhere', async (t) => {
  const moved = await upstream();
  t.teardown(() => moved.close());
  // The API moved (a blue/green switch): the request was decided by the rules for the old one.
  const { up, res } = await decidedAcrossReload(t, (rules) => { rules.proxy.upstream = moved.origin; });
  const body = await res.json() as { reason: string; detail: string };
  t.equal(res.status, 502);
  t.equal(body.reason, 'upstream-unavailable');
  t.match(body.detail, /a reload moved proxy\.upstream while the request was being decided .* it was not sent; send it again/);
  t.equal(moved.seen.length, 0, 'the new upstream did not get it (it did: a request its rules never decided)');
  t.equal(up.seen.length, 0, 'nor the old one, whose pool is closed');
});

t.test('a request waiting for its key set\'s fetch when a reload replaces that key set gets the keys it waited for, not a 503', async (t) => {
  const [key, rotated] = [await testKey('ES256'), await testKey('ES256')];
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const mirror = await jwksServer(jwks(key, rotated));
  const rules = baseRules(up.origin, keys.url, (r) => { r.identity.issuers[0].jwks = { url: keys.url, refresh: '5m', cooldown: '1s', timeout: '5s' }; });
  const dg = await startTest(rules);
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); await mirror.close(); });
  // Past the cooldown of the start-up fetch; then the issuer rotates a key in, on a slow server.
  await new Promise((r) => setTimeout(r, 1_100));
  keys.body = jwks(key, rotated);
  keys.delayMs = 800;
  const tok = await token({ key: rotated, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09' });
  const fetches = keys.fetches;
  const answer = fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  await until('the key fetch for its token', () => keys.fetches > fetches, 10_000);
  // The key set moves to another URL (a mirror, a CDN in front): a new key set replaces it.
  const next = structuredClone(rules);
  next.identity.issuers[0].jwks.url = mirror.url;
  writeFileSync(dg.file, stringify(next));
  await dg.dg.swap(loadRules(dg.file));
  const res = await answer;
  await res.text();
  t.equal(res.status, 200, 'both rules accept the token: forwarded (it was 503 identity-unavailable, its fetch aborted by the close)');
});

t.test('reloads asked for while one waits its turn are that one: a burst queues one reload, which sees the latest file', async (t) => {
  const { rules, dg, reload, logs } = await setup(t);
  // A first reload that takes a while: a new issuer whose keys come 600 ms late.
  const slow = await jwksServer(jwks(await testKey('ES256')));
  slow.delayMs = 600;
  t.teardown(() => slow.close());
  const first = structuredClone(rules);
  first.identity.issuers.push({ ...first.identity.issuers[0], issuer: 'https://other.test.local', jwks: { url: slow.url, timeout: '5s' } });
  for (const c of first.consumers.registry) c.issuer = first.identity.issuers[0].issuer;
  writeFileSync(dg.file, stringify(first));
  const running = reload.reload('first');
  await new Promise((r) => setTimeout(r, 100));
  // Meanwhile, 200 asks and a last change to the file.
  const burst = Array.from({ length: 200 }, (_, i) => reload.reload(`burst ${i}`));
  writeFileSync(dg.file, stringify(withProbe(first, 1)));
  t.match(await running, { changed: true });
  const results = await Promise.all(burst);
  t.ok(results.every((r) => r === results[0]), 'every ask of the burst got the one result');
  t.match(results[0], { changed: true });
  t.equal((await fetch(`${dg.url}/probe1`)).status, 200, 'the latest file is in force');
  t.equal(logs.filter((l) => l.msg === 'rules reloaded').length, 2, 'two reloads ran: the first, and one for the burst');
  t.equal(logs.filter((l) => l.msg === 'rules unchanged').length, 0, 'and no more (before: 199 more, each reading and checking the file)');
});

t.test('a rules directory that cannot be watched is read every POLL_MS instead, and says so', async (t) => {
  // The watch's failure is simulated: the real one (the node's inotify instances used up by the
  // uid) would break every other watcher of this machine's tests running alongside.
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = baseRules(up.origin, keys.url);
  const dg = await startTest(rules);
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const failures = [
    ['throws', (() => { throw Object.assign(new Error('inotify_init failed'), { code: 'EMFILE' }); }) as unknown as typeof watch],
    ['emits error', ((...args: Parameters<typeof watch>) => { const w = watch(...args); setImmediate(() => w.emit('error', Object.assign(new Error('watch failed'), { code: 'ENOSPC' }))); return w; }) as typeof watch],
  ] as const;
  for (const [n, [how, watchDir]] of failures.entries()) {
    const logs: Record<string, unknown>[] = [];
    const reload = reloader(dg.file, {}, dg.dg, (l) => logs.push(l), RETRY_MS, watchDir);
    dg.dg.reloadStatus = reload.status;
    await until(`${how}: polling`, () => reload.status.watching === 'polling');
    t.match(logs.find((l) => l.level === 'warn'), { msg: /cannot be watched; its files are read every 2s/, error: n === 0 ? 'EMFILE' : 'ENOSPC' }, `${how}: a warn line with the cause`);
    const ready = await (await fetch(`${dg.admin}/readyz`)).json() as { reload: { watching: string } };
    t.equal(ready.reload.watching, 'polling', `${how}: /readyz says so`);
    writeFileSync(dg.file, stringify(withProbe(rules, 10 + n)));
    await until(`${how}: the change applied`, () => reload.status.succeeded === 1, POLL_MS + SETTLE_MS + 3_000);
    const probe = await fetch(`${dg.url}/probe${10 + n}`);
    await probe.text();
    t.equal(probe.status, 200, `${how}: the new rules are in force`);
    reload.close();
  }
});
