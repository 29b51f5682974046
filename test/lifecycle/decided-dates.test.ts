// What a request was decided with must still hold when it is sent. The retry-storm monitor
// reads a small body (as slowly as the client sends it) after the sunset, deprecation and
// credential checks have run: an operation's sunset, a deprecation that refuses the caller, or
// the token's expiry that comes during that wait refuses the request as it would be refused
// now (the last check, `dates`), and it is never sent. The clock is the server's own
// (injected), moved while the body is still coming.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import { world, startLifecycle, monitorsOnly, type World, type Lifecycled } from './support.ts';

/** Send the head and the body's first byte; `advance` the clock; then the rest. The answer's text. */
async function acrossTheDate(port: number, token: string, advance: () => void): Promise<string> {
  const body = '{"amount":1}';
  const head = `POST /payments HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    s.setEncoding('latin1');
    s.on('data', (c: string) => { got += c; });
    s.on('end', () => resolve(got));
    s.on('error', reject);
    s.write(head + body.slice(0, 1));
    // The checks before the monitor have run by then; it waits for the body.
    setTimeout(() => { advance(); s.write(body.slice(1)); }, 300);
  });
}

/** A world whose payments operation has `deprecated`, the monitor that reads bodies, and a clock the test moves. */
async function started(t: Test, deprecated: Record<string, unknown> | undefined, more: (r: Record<string, any>) => void = () => {}): Promise<{ w: World; url: string; advance: (ms: number) => () => void; seen: () => number; port: number; last: () => Lifecycled['seen'][number] | undefined }> {
  let offset = 0;
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.monitors = monitorsOnly({ retryStorm: { mode: 'enforce' } });
    r.credentials = { mode: 'off' };
    const pay = r.contract.operations.find((o: { id: string }) => o.id === 'pay');
    delete pay.changedIn;
    if (deprecated) pay.deprecated = deprecated;
    more(r);
  }), { now: () => Date.now() + offset });
  t.teardown(async () => { await dg.close(); await w.close(); });
  return { w, url: dg.url, port: Number(new URL(dg.url).port), advance: (ms) => () => { offset += ms; }, seen: () => w.up.seen.length, last: () => dg.seen.at(-1) };
}

const iso = (ms: number) => new Date(Math.ceil(ms / 1000) * 1000).toISOString();

t.test('a sunset that comes while the body is read: 410 operation-sunset, never sent', async (t) => {
  const { w, port, advance, seen, last } = await started(t, { since: '2026-01-01', sunset: iso(Date.now() + 60_000) }, (r) => { r.contract.blockAt = 'never'; });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 410 /, `410 (got ${answer.split('\r\n')[0]})`);
  t.match(answer, /"reason":"operation-sunset"/);
  t.match(answer, /the operation's sunset came while the request was being decided \([-0-9T:.Z]+\)"/);
  t.equal(seen(), 0, 'the upstream got nothing');
  // A decision of the checks, recorded as the refusal it is (the last check's), not an allow.
  t.match(last()?.decision, { decision: 'deny', enforced: true, reason: 'operation-sunset' });
  t.match(last()?.ctx.checks.at(-1), { check: 'dates', outcome: 'deny', reason: 'operation-sunset' });
  t.match(answer, /"sunset":"[-0-9T:.Z]+"/, 'the problem names the sunset, as any refusal of a deprecated operation does');
});

t.test('a deprecation that refuses an automation\'s critical write, in force while the body is read: 403 deprecated-operation', async (t) => {
  const { w, port, advance, seen, last } = await started(t, { since: iso(Date.now() + 60_000) });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 403 /, `403 (got ${answer.split('\r\n')[0]})`);
  t.match(answer, /"reason":"deprecated-operation"/);
  t.equal(seen(), 0, 'the upstream got nothing');
  t.match(last()?.decision, { decision: 'deny', reason: 'deprecated-operation' });
});

t.test('such a refusal says where to move, as the deprecation check\'s does: its replacement, sunset and contract versions', async (t) => {
  // The problem's own movingOn is read at the request's start, before the date: it was left out.
  const { w, port, advance } = await started(t, { since: iso(Date.now() + 60_000), sunset: iso(Date.now() + 3_600_000), replacement: 'createItem' });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  const problem = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>;
  t.match(problem, { reason: 'deprecated-operation', replacement: 'createItem', sunset: /^[-0-9T:.]+Z$/, declaredContract: '2026-09', currentContract: '2026-09' });
  t.match(problem.detail, /while the request was being decided \([-0-9T:.Z]+\); use createItem$/);
});

t.test('a deprecation that only warns this caller, begun while the body is read: forwarded with its warning, not as a plain allow', async (t) => {
  const { w, port, advance, seen, last } = await started(t, { since: iso(Date.now() + 60_000), replacement: 'createItem' }, (r) => { r.contract.blockAt = 'never'; });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 200 /);
  t.match(answer, /\r\ndriftguard-warning: [^\r]*deprecated-operation/i, 'the warning, as a request arriving now gets');
  t.equal(seen(), 1);
  t.equal(w.up.seen[0]!.headers['driftguard-decision'], 'warn', 'the upstream is told warn');
  t.match(last()?.decision, { decision: 'warn', reason: 'deprecated-operation', replacement: 'createItem' });
  t.match(last()?.ctx.checks.at(-1), { check: 'dates', outcome: 'warn', reason: 'deprecated-operation' });
});

t.test('a token that expires (past the clock skew) while the body is read: 401, never sent', async (t) => {
  const { w, port, advance, seen } = await started(t, undefined);
  const answer = await acrossTheDate(port, await w.token({ ttl: 60 }), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 401 /, `401 (got ${answer.split('\r\n')[0]})`);
  t.match(answer, /"reason":"invalid-credential"/);
  t.match(answer, /www-authenticate: Bearer realm="driftguard", error="invalid_token"/i);
  t.equal(seen(), 0, 'the upstream got nothing');
});

t.test('no date passed during the wait: forwarded', async (t) => {
  const { w, port, advance, seen } = await started(t, { since: iso(Date.now() + 600_000) });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 200 /, `200 (got ${answer.split('\r\n')[0]})`);
  t.equal(seen(), 1);
});

t.test('a warn-only deprecation and the sunset both come during the wait: the 410 alone, no deprecation warning beside it', async (t) => {
  // A request arriving after both is refused by the sunset check before any warning.
  const { w, port, advance, last } = await started(t, { since: iso(Date.now() + 60_000), sunset: iso(Date.now() + 90_000) }, (r) => { r.contract.blockAt = 'never'; });
  const answer = await acrossTheDate(port, await w.token(), advance(120_000));
  t.match(answer, /^HTTP\/1\.1 410 /);
  t.notMatch(answer, /driftguard-warning/i, 'no warning header');
  t.match(last()?.decision, { decision: 'deny', reason: 'operation-sunset', warnings: [] });
});
