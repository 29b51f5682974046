// The benchmark's own pieces, checked fast and without timing anything: the mix is the one
// the issue asks for, the tokens are real ES256 tokens driftguard's verifier accepts, the
// generated rules pass the real loader, and the report computes every budget figure.

import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { loadRules } from '../../proxy/rules/load.ts';
import { signingKey, mintToken, rulesFor, requestMix, wrkLines, PLACEHOLDER, FIRST_STALE, CONSUMERS, ISSUER, AUDIENCE, OPERATIONS } from './scenario.ts';
import { summarise, median, invalidRun, addedRatio } from './report.ts';
import { countLogLines } from './log-lines.ts';

t.test('the mix is 85% allowed, 10% warned, 5% denied, and only stale consumers are denied', async (t) => {
  const mix = requestMix(10, (c) => `token-${c}`);
  t.equal(mix.length, 1000);
  const count = (e: string) => mix.filter((r) => r.expect === e).length;
  t.same([count('allowed'), count('warned'), count('denied')], [850, 100, 50]);
  for (const r of mix) {
    const consumer = Number(r.token.slice('token-'.length));
    if (r.expect === 'denied') t.ok(consumer >= FIRST_STALE, `${r.operation} denied to a stale consumer`);
    else t.ok(consumer < FIRST_STALE, `${r.operation} from a current consumer`);
  }
  // Every request carries a placeholder wrk makes unique: no request repeats.
  t.ok(mix.every((r) => r.path.includes(PLACEHOLDER) || r.body.includes(PLACEHOLDER)));
  t.ok(mix.filter((r) => r.method !== 'GET').every((r) => r.idempotent));
  t.equal(wrkLines(mix).split('\n').filter(Boolean).length, 1000);
  t.equal(PLACEHOLDER.length, 12, 'the Lua script substitutes a 12-character value');
});

t.test('tokens are ES256 JWTs that jose verifies with the options driftguard pins', async (t) => {
  const key = signingKey('k1');
  const now = Math.floor(Date.now() / 1000);
  const keys = createLocalJWKSet({ keys: [key.publicJwk as never] });
  const current = await jwtVerify(mintToken(key, 3, now), keys, { issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], requiredClaims: ['exp', 'sub', 'jti', 'iat'] });
  t.equal(current.payload.contract_version, '2026-09');
  t.match(current.payload.task_id, /^task-3-/);
  t.equal(current.payload.exp! - current.payload.iat!, 3600);
  const stale = await jwtVerify(mintToken(key, FIRST_STALE, now), keys, { issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'] });
  t.equal(stale.payload.contract_version, '2026-06');
  t.not(mintToken(key, 3, now), mintToken(key, 3, now), 'every token is new (jti)');
});

t.test('the generated rules pass the real loader', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-rules-'));
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, stringify(rulesFor({ upstream: 'http://127.0.0.1:1', jwksUrl: 'http://127.0.0.1:2/jwks.json', listen: '127.0.0.1:0', admin: '127.0.0.1:0' })));
  const rules = loadRules(file);
  t.equal(rules.contract.operations.length, OPERATIONS.length);
  t.equal(OPERATIONS.length, 20);
  t.equal(rules.consumers.registry.size, CONSUMERS);
});

t.test('the report computes every budget figure from per-round samples', async (t) => {
  const samples = {
    direct: { throughputRps: [30000, 30000], oneConnectionP50Us: [50, 50], oneConnectionP99Us: [200, 200] },
    bare: { throughputRps: [10000, 12000], oneConnectionP50Us: [150, 150], oneConnectionP99Us: [1000, 1000] },
    driftguard: { throughputRps: [9000, 9600], oneConnectionP50Us: [200, 150], oneConnectionP99Us: [1200, 1400], cpuSecondsPer1000AtFixedRate: [0.08, 0.09], coldRps: [3000, 3500] },
    jose: { verifyRate: [5000, 5000] },
  };
  const r = summarise(samples, { bare: 150, 'bare-limited': 100, driftguard: 180, 'driftguard-limited': 120 }, {}, {}) as { budget: { id: string; value: number; pass: boolean }[]; context: Record<string, number>; pass: boolean };
  const by = Object.fromEntries(r.budget.map((b) => [b.id, b]));
  t.same(Object.keys(by).sort(), ['addedP50OneConnection', 'coldPath', 'cpuPer1000Rps', 'p99OneConnection', 'peakRssLimitedMiB', 'peakRssOverBareMiB', 'throughput']);
  t.equal(by.throughput!.value, 0.85); // median of 0.9 and 0.8
  t.equal(by.addedP50OneConnection!.value, 1.25); // median of 150/100 and 100/100
  t.equal(by.coldPath!.value, 0.65);
  t.equal(by.peakRssOverBareMiB!.value, 30);
  t.same(r.context, { bareLimitedPeakRssMiB: 100, driftguardLimitedOverBareLimitedMiB: 20 }, 'the limited floor, for context');
  t.equal(by.p99OneConnection!.pass, true);
  t.equal(r.pass, true);
  t.equal(median([3, 1, 2]), 2);
  t.ok(Number.isNaN(median([])));
});

t.test('a budget missed, or a figure not measured, fails its line and the whole report', async (t) => {
  type Report = { budget: { id: string; pass: boolean }[]; pass: boolean };
  const good = {
    direct: { throughputRps: [30000, 30000], oneConnectionP50Us: [50, 50], oneConnectionP99Us: [200, 200] },
    bare: { throughputRps: [10000, 12000], oneConnectionP50Us: [150, 150], oneConnectionP99Us: [1000, 1000] },
    driftguard: { throughputRps: [9000, 9600], oneConnectionP50Us: [200, 150], oneConnectionP99Us: [1200, 1400], cpuSecondsPer1000AtFixedRate: [0.08, 0.09], coldRps: [3000, 3500] },
    jose: { verifyRate: [5000, 5000] },
  };
  const rss = { bare: 150, 'bare-limited': 100, driftguard: 180, 'driftguard-limited': 120 };
  const met = summarise(good, rss, {}, {}) as Report;
  t.equal(met.pass, true, 'every line met: the report passes');
  const slow = structuredClone(good);
  slow.driftguard.throughputRps = [4000, 5000];
  const missed = summarise(slow, rss, {}, {}) as Report;
  t.equal(missed.budget.find((b) => b.id === 'throughput')!.pass, false, 'throughput 0.4 × the floor is a miss');
  t.equal(missed.pass, false, 'and the report fails');
  const unmeasured = summarise(good, { bare: 150, 'bare-limited': 100, driftguard: 180 }, {}, {}) as Report;
  t.equal(unmeasured.budget.find((b) => b.id === 'peakRssLimitedMiB')!.pass, false, 'no driftguard-limited peak: not a pass');
  t.equal(unmeasured.pass, false);
});

t.test('decision-log lines are counted in chunks, a line split across chunks once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-loglines-'));
  const file = join(dir, 'log');
  const decision = '{"time":"x","msg":"decision","decision":"allow"}';
  const other = '{"level":"info","msg":"driftguard listening"}';
  writeFileSync(file, [decision, other, decision, '', decision].join('\n') + '\n' + other);
  // Chunks of 7 bytes split every line; one large chunk holds them all.
  for (const chunk of [7, 64, 1 << 20]) t.same(countLogLines(file, chunk), { lines: 5, decisionLines: 3 }, `chunks of ${chunk} bytes`);
  t.same(countLogLines(join(dir, 'missing')), { lines: 0, decisionLines: 0 });
});

t.test('a ratio whose floor added nothing, and a cold round that replayed its tokens, never pass', async (t) => {
  type Report = { budget: { id: string; value: number | null; pass: boolean; excluded?: string[]; notes?: string[] }[] };
  t.equal(addedRatio(300, 100, 200), 2);
  t.equal(addedRatio(300, 100, 90), Infinity, 'the floor under direct and driftguard over it: the worst, not a negative pass');
  t.equal(addedRatio(300, 100, 100), Infinity, 'the floor equal to direct: infinite, not dropped');
  t.ok(Number.isNaN(addedRatio(90, 100, 100)), 'neither added anything: no figure');
  t.equal(addedRatio(90, 100, 200), 0, 'driftguard under direct added nothing');
  t.equal(median([1.4, Infinity, 1.6]), 1.6, 'an infinite round counts in the median');
  t.equal(median([1.4, NaN, 1.6]), 1.5, 'a round with no figure does not');
  const samples = {
    direct: { throughputRps: [30000, 30000, 30000], oneConnectionP50Us: [100, 100, 100], oneConnectionP99Us: [200, 200, 200] },
    bare: { throughputRps: [10000, 10000, 10000], oneConnectionP50Us: [90, 200, 200], oneConnectionP99Us: [1000, 1000, 1000] },
    driftguard: { throughputRps: [9000, 9000, 9000], oneConnectionP50Us: [400, 240, 280], oneConnectionP99Us: [1200, 1200, 1200], cpuSecondsPer1000AtFixedRate: [0.08, 0.08, 0.08], coldRps: [4000, 4000, 4000], coldReplays: [3, 3, 0] },
    jose: { verifyRate: [5000, 5000, 5000] },
  };
  const r = summarise(samples, { bare: 150, 'bare-limited': 100, driftguard: 180, 'driftguard-limited': 120 }, {}, {}) as Report;
  const by = Object.fromEntries(r.budget.map((b) => [b.id, b]));
  t.equal(by.addedP50OneConnection!.value, 1.8, 'rounds 1.4, 1.8 and infinite (the floor under direct): median 1.8');
  t.equal(by.addedP50OneConnection!.pass, false);
  t.equal(by.coldPath!.value, 0.8, 'the replayed rounds left out');
  t.same(by.coldPath!.excluded, ['round 1: the cold tokens ran out (replayed 3x)', 'round 2: the cold tokens ran out (replayed 3x)']);
  t.same(by.addedP50OneConnection!.notes, ['round 1: infinite (the floor added nothing in that round, driftguard did)'], 'the infinite round is named: the JSON writes it null');
  samples.driftguard.coldReplays = [1, 1, 1];
  const none = Object.fromEntries((summarise(samples, { bare: 150, 'bare-limited': 100, driftguard: 180, 'driftguard-limited': 120 }, {}, {}) as Report).budget.map((b) => [b.id, b]));
  t.equal(none.coldPath!.pass, false, 'every cold round replayed: no figure, not a pass');
});

t.test('a run whose answers are not the target\'s work is refused: errors, stalls, refusals the mix does not call for', async (t) => {
  const run = (over: Partial<{ requests: number; issued: number; status: number; read: number; timeout: number }>) => {
    const o = { requests: 10_000, issued: 10_033, status: 500, read: 0, timeout: 0, ...over };
    return { requests: o.requests, issued: o.issued, errors: { connect: 0, read: o.read, write: 0, status: o.status, timeout: o.timeout } };
  };
  t.equal(invalidRun(run({}), 32, 0.05), undefined, '5% refused as the mix says, one request in flight per connection at the end and one more');
  t.match(invalidRun(run({ status: 10_000 }), 32, 0.05), /100\.0% of the answers were refusals .* the mix calls for 5\.0%/, 'everything refused (a 503 storm): refused');
  t.match(invalidRun(run({ status: 500 }), 32, 0), /5\.0% of the answers were refusals/, 'the floor refusing anything: refused');
  t.match(invalidRun(run({ issued: 10_041 }), 32, 0.05), /8 requests written were never answered/, 'stalled requests');
  t.match(invalidRun(run({ read: 2 }), 32, 0.05), /2 socket errors/);
  t.match(invalidRun(run({ timeout: 1 }), 32, 0.05), /1 socket errors or timeouts/);
  t.match(invalidRun(run({ requests: 0, issued: 2, status: 0 }), 1, 0.05), /no request was answered/);
  t.equal(invalidRun(run({ requests: 200, issued: 202, status: 14 }), 1, 0.05), undefined, 'a short run may hold a few more refusals than the mix\'s share');
});
