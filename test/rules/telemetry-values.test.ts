// Telemetry values the schema lets through but only the parser or the file system refuses
// (`PT`, a path too long, a loop of links): problems of the file at their field and line,
// beside its other problems, never a bare exception out of the loader.
import t from 'tap';
import { loadRules, RulesError, addRulesValidator } from '../../proxy/rules/load.ts';
import '../../proxy/lifecycle/config.ts';
import '../../proxy/telemetry/config.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';

const cases: [string, (r: Record<string, any>) => void, RegExp][] = [
  ['exportTimeout: PT (schema pattern accepts it)', (r) => { r.telemetry = { traces: { exportTimeout: 'PT' } }; }, /^telemetry\.traces\.exportTimeout$/],
  ['scheduledDelay: P', (r) => { r.telemetry = { traces: { batch: { scheduledDelay: 'P' } } }; }, /^telemetry\.traces\.batch\.scheduledDelay$/],
  ['scheduledDelay: P1DT', (r) => { r.telemetry = { traces: { batch: { scheduledDelay: 'P1DT' } } }; }, /^telemetry\.traces\.batch\.scheduledDelay$/],
  ['decisionLog.output of a name too long (ENAMETOOLONG)', (r) => { r.telemetry = { decisionLog: { output: 'a'.repeat(300) + '.log' } }; }, /^telemetry\.decisionLog\.output$/],
  ['decisionLog.output through a symlink loop (ELOOP)', (r) => { r.telemetry = { decisionLog: { output: '/proc/self/root/'.repeat(50) + 'x.log' } }; }, /^telemetry\.decisionLog\.output$/],
];
for (const [what, patch, field] of cases) {
  t.test(what, async (t) => {
    const file = writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { patch(r); r.contract.minimum = '1999-01'; }));
    let err: unknown;
    try { loadRules(file); } catch (e) { err = e; }
    t.ok(err instanceof RulesError, `a RulesError (got ${(err as Error)?.constructor?.name}: ${(err as Error)?.message?.slice(0, 120)})`);
    if (err instanceof RulesError) {
      t.ok(err.problems.some((p) => field.test(p.field) && p.line > 0), 'named at its field and line');
      t.ok(err.problems.some((p) => p.field === 'contract.minimum'), 'and the file\'s other problems too');
    }
  });
}

// Last: the validator it adds stays for the rest of this process.
t.test('a validator that throws (a defect) is a problem of the file beside the others, not a crash', async (t) => {
  addRulesValidator(() => { throw new TypeError('a defect'); });
  const file = writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.contract.minimum = '1999-01'; }));
  let err: unknown;
  try { loadRules(file); } catch (e) { err = e; }
  t.ok(err instanceof RulesError, 'a RulesError');
  const problems = (err as RulesError).problems;
  t.match(problems.find((p) => p.field === ''), { file, message: /could not be checked \(TypeError: a defect\).*defect of driftguard's/ });
  t.ok(problems.some((p) => p.field === 'contract.minimum'), 'and the file\'s other problems too');
});
