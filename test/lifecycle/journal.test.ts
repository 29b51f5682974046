// The journal under a full disk, for real: the child process runs with a file size limit
// (`ulimit -f`), so an append is cut short part-way and then fails (EFBIG), as on a disk that
// fills up. What the API acknowledges next must still be there at the next start.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const JOURNAL = fileURLToPath(new URL('../../proxy/lifecycle/journal.ts', import.meta.url));

const CHILD = `
const { Journal, replay } = await import(process.env.JOURNAL);
const file = process.env.FILE;
const j = new Journal(file, []);
const add = (i) => ({ op: 'add', revocation: { id: 'r' + i, kind: 'jti', value: 'x'.repeat(300), reason: 'test', endMs: Date.now() + 3600e3, createdMs: Date.now(), source: 'admin' } });
let failed;
for (let i = 0; i < 10 && !failed; i++) { try { j.append(add(i)); } catch (err) { failed = { at: i, code: err.code }; } }
// Room is left for a short record where the failed one was cut back: the API acknowledges it.
let small;
try { j.append({ op: 'delete', id: 'r0', by: 'test', at: 1 }); small = 'ok'; } catch (err) { small = err.code; }
console.log(JSON.stringify({ failed, small, replayed: replay(file, Date.now()) }));
`;

t.test('an append cut short by a full disk is cut back, so the next acknowledged record survives a restart', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'dg-journal-')), 'journal');
  // 1 KiB: two records of about 420 bytes fit, the third is written in part and fails.
  const out = await new Promise<string>((resolve, reject) => {
    execFile('bash', ['-c', `ulimit -f 1; exec "${process.execPath}" --input-type=module -e "$CHILD"`], { env: { ...process.env, CHILD, JOURNAL, FILE: file, NODE_OPTIONS: '' } }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
  });
  const r = JSON.parse(out.trim().split('\n').at(-1)!);
  t.same(r.failed, { at: 2, code: 'EFBIG' }, 'the third record did not fit (a real short write, then EFBIG)');
  t.equal(r.small, 'ok', 'the next record was written (before: the fragment filled the space, and on a disk freed meanwhile it would have been glued to it)');
  t.same(r.replayed.skipped, [], 'no fragment in the journal');
  t.same(r.replayed.revocations.map((x: { id: string }) => x.id), ['r1'], 'r0 added then lifted, r1 in force, r2 never made');
});
