// The decision log's buffer bound (telemetry.decisionLog.maxBufferBytes): while the output
// cannot keep up, at most that many bytes of lines wait, and further lines are dropped and
// counted, never queued. A real file output: within one turn of the event loop, the flushes
// fill the write stream past its high-water mark, the log then waits for 'drain', and the
// lines written in the same turn pile up against the bound.

import t, { type Test } from 'tap';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getDefaultHighWaterMark } from 'node:stream';
import { DecisionLog } from '../../proxy/telemetry/decision-log.ts';

const MAX = 65_536;

/**
 * Wait until `cond()` holds, polling; false after `ms`. A write to the file completes in the
 * thread pool, a timer of the log fires late on a busy machine: the assertions wait for the
 * event (a count of the log's), not for a fixed time.
 */
async function until(cond: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return cond();
}

function run(line: string, count: number) {
  const file = join(mkdtempSync(join(tmpdir(), 'driftguard-log-')), 'decisions.log');
  const log = new DecisionLog({ kind: 'file', file }, MAX);
  for (let i = 0; i < count; i++) log.write(line);
  return { log, file };
}

// A line's size: its UTF-8 bytes, or what it holds on the heap if more (two bytes a character
// once one character is beyond Latin-1).
for (const [name, line, size] of [
  ['ASCII', 'a'.repeat(1000), 1001],
  ['non-ASCII, 3 bytes a character in UTF-8', '€'.repeat(1000), 3001],
  ['one Cyrillic letter, two bytes a character on the heap', 'Ж' + 'a'.repeat(999), 2001],
] as const) {
  t.test(`${name}: the lines waiting never pass maxBufferBytes`, async (t) => {
    const { log, file } = run(line, 200);
    // The lines that fit go out when the next would not (the output can take them), until
    // the write stream holds more than its high-water mark; from then on, as many as fit
    // wait, and the rest are dropped. Before, the bound counted characters (three times as
    // many '€' lines waited), and a line that did not fit was dropped without that flush, so
    // a burst of 64 KiB lost lines with the output idle.
    const fit = Math.floor(MAX / size);
    // The write stream's high-water mark counts what is written: UTF-8.
    const flushes = Math.ceil(getDefaultHighWaterMark(false) / (fit * (Buffer.byteLength(line) + 1)));
    t.equal(log.dropped, 200 - (flushes + 1) * fit, `${flushes} × ${fit} lines of ${size} bytes written out, ${fit} waiting: at most ${MAX} bytes; the rest dropped`);
    await log.close();
    t.equal(log.lines, (flushes + 1) * fit, 'the lines written out and the waiting ones are counted as written once the output took them');
    t.equal(log.lines + log.dropped, 200, 'every line is written or counted as dropped');
    const written = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    t.equal(written.length, log.lines, 'what was counted as written reaches the file');
    t.ok(written.every((l) => l === line), 'whole lines');
  });
}

const noDevFull = existsSync('/dev/full') ? false : 'no /dev/full on this machine';

t.test('an output that fails (a full disk) counts every line as dropped, none as written, and says so once', { skip: noDevFull }, async (t) => {
  const reports: unknown[][] = [];
  const log = new DecisionLog({ kind: 'file', file: '/dev/full' }, MAX, { report: (...a) => { reports.push(a); }, reopenMs: 50 });
  t.teardown(() => log.close());
  for (let i = 0; i < 10; i++) log.write(`{"n":${i}}`);
  log.flush();
  t.ok(await until(() => log.dropped === 10), 'the failed write lost its lines');
  for (let i = 0; i < 100; i++) log.write(`{"n":${i}}`);
  // Opened again every 50 ms, and each time its first waiting line tried and failed: the
  // lines wait (within maxBufferBytes) for a disk that takes them. (Once, they were handed to
  // the full disk at the first reopen and lost; before that, counted as written.)
  await new Promise((r) => setTimeout(r, 500));
  t.equal(log.lines, 0, 'nothing reached the output');
  t.equal(log.dropped, 10, 'only the failed write\'s lines are counted as dropped');
  t.equal(log.fill().entries, 100, 'the rest wait');
  // The file was opened again every 50 ms meanwhile, and failed again each time it was written.
  t.same(reports, [[true, 'ENOSPC']], 'the failure is reported once, with its code (before: never)');
});

/**
 * A file output whose path leads to a full disk first (then, as a test moves the link to `real`,
 * to a file: space freed, or the volume remounted), after its first write has failed.
 */
async function onFullDisk(t: Test, reopenMs: number): Promise<{ log: DecisionLog; reports: unknown[][]; file: string; real: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-log-'));
  const file = join(dir, 'decisions.log');
  const real = join(dir, 'after.log');
  symlinkSync('/dev/full', file);
  const reports: unknown[][] = [];
  const log = new DecisionLog({ kind: 'file', file }, MAX, { report: (...a) => { reports.push(a); }, reopenMs });
  t.teardown(() => log.close());
  log.write('{"n":"lost"}');
  log.flush();
  t.ok(await until(() => reports.length > 0), 'the write failed');
  return { log, reports, file, real };
}

t.test('a file output that failed is opened again: once it can be written, what waited and what follows is written', { skip: noDevFull }, async (t) => {
  const { log, reports, file, real } = await onFullDisk(t, 600);
  t.same(reports, [[true, 'ENOSPC']], 'the failure is reported');
  writeFileSync(real, '{"partial');
  unlinkSync(file);
  symlinkSync(real, file);
  for (let i = 0; i < 3; i++) log.write(`{"n":${i}}`);
  log.flush();
  t.equal(log.fill().entries, 3, 'lines wait for the file to be opened again, within maxBufferBytes');
  // Opened again 600 ms after the failure: what waited is written.
  t.ok(await until(() => log.lines === 3), 'what waited is written once the file is opened again');
  log.write('{"n":3}');
  log.flush();
  t.ok(await until(() => log.lines === 4), 'and what followed');
  t.same(reports, [[true, 'ENOSPC'], [false]], 'the recovery is reported once');
  t.equal(log.lines, 4, 'what waited and what followed is written (before: dropped until a restart)');
  t.equal(log.dropped, 1, 'the one line the failed write lost');
  t.same(readFileSync(real, 'utf8').split('\n'), ['{"partial', '{"n":0}', '{"n":1}', '{"n":2}', '{"n":3}', ''], 'a line cut short is left alone; the next starts a line of its own');
});

t.test('lines wait through a full disk longer than one reopen: each reopen tries one line first, and it waits again if the disk is still full', { skip: noDevFull }, async (t) => {
  const { log, reports, file, real } = await onFullDisk(t, 200);
  for (let i = 0; i < 3; i++) log.write(`{"n":${i}}`);
  log.flush();
  // Still full at three or four reopens.
  await new Promise((r) => setTimeout(r, 800));
  // A reopen's probe holds one line while its write is in flight, and puts it back at the head
  // when the write fails: read between probes (read during one, on a loaded machine, it was 2).
  await until(() => log.fill().entries === 3, 2_000);
  t.equal(log.fill().entries, 3, 'the waiting lines still wait (before: all handed to the full disk at the first reopen, and lost)');
  unlinkSync(file);
  symlinkSync(real, file);
  t.ok(await until(() => log.lines === 3), 'written once the disk takes them');
  t.equal(readFileSync(real, 'utf8'), '{"n":0}\n{"n":1}\n{"n":2}\n', 'whole, in order');
  t.equal(log.dropped, 1, 'only the line of the first failed write is lost');
  t.same(reports, [[true, 'ENOSPC'], [false]], 'said once, and the recovery once');
});

t.test('a file rotated away (renamed, as logrotate does, or deleted) is followed: later lines go to a new file at the path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-log-'));
  const file = join(dir, 'decisions.log');
  const log = new DecisionLog({ kind: 'file', file }, MAX);
  t.teardown(() => log.close());
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  log.write('{"n":0}');
  log.flush();
  t.ok(await until(() => log.lines === 1), 'written');
  renameSync(file, file + '.1');
  log.write('{"n":1}');
  log.flush();
  t.ok(await until(() => log.lines === 2), 'written');
  await sleep(1_100); // the path is looked at no more than once a second
  log.write('{"n":2}');
  log.flush();
  t.ok(await until(() => log.lines === 3), 'written');
  t.equal(readFileSync(file + '.1', 'utf8'), '{"n":0}\n{"n":1}\n', 'lines before the rotation was seen stay in the rotated file');
  t.equal(readFileSync(file, 'utf8'), '{"n":2}\n', 'later lines go to a new file at the path (before: on into the rotated one)');
  unlinkSync(file);
  await sleep(1_100);
  log.write('{"n":3}');
  log.flush();
  t.ok(await until(() => log.lines === 4), 'written');
  t.equal(readFileSync(file, 'utf8'), '{"n":3}\n', 'a deleted file is made again, not written on unseen');
  t.equal(log.lines, 4);
  t.equal(log.dropped, 0);
});

t.test('a file deleted where no new one can be made is reported, and its lines wait: never counted as written into the deleted file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-log-'));
  const file = join(dir, 'decisions.log');
  const reports: string[] = [];
  const log = new DecisionLog({ kind: 'file', file }, MAX, { report: (failed, error) => reports.push(`${failed} ${error}`), reopenMs: 300 });
  t.teardown(() => log.close());
  log.write('{"n":0}');
  log.flush();
  t.ok(await until(() => log.lines === 1), 'written');
  rmSync(dir, { recursive: true });
  await new Promise((r) => setTimeout(r, 1_100)); // the path is looked at no more than once a second
  log.write('{"n":1}');
  log.flush();
  // Before: written into the deleted file, counted as written, nothing said.
  t.ok(await until(() => reports.length > 0, 3_000), 'said');
  t.match(reports[0], /^true ENOENT/);
  t.equal(log.lines, 1, 'the line is not counted as written');
  t.equal(log.fill().entries, 1, 'it waits');
  mkdirSync(dir);
  t.ok(await until(() => log.lines === 2, 3_000), 'written once the path can be opened again');
  t.equal(readFileSync(file, 'utf8'), '{"n":1}\n');
  t.match(reports, ['true ENOENT', 'false undefined'], 'and said so');
});

t.test('at close, lines waiting for a path that cannot be opened again are dropped, not written into the deleted file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-log-'));
  const file = join(dir, 'decisions.log');
  const reports: string[] = [];
  const log = new DecisionLog({ kind: 'file', file }, MAX, { report: (failed, error) => reports.push(`${failed} ${error}`) });
  log.write('{"n":0}');
  log.flush();
  t.ok(await until(() => log.lines === 1), 'written');
  rmSync(dir, { recursive: true });
  await new Promise((r) => setTimeout(r, 1_100));
  log.write('{"n":1}');
  log.flush();
  t.match(reports, ['true ENOENT'], 'the failure is reported, the line waits');
  log.write('{"n":2}');
  // Shutdown within the second after the failed look at the path.
  await log.close();
  t.equal(log.lines, 1, 'nothing more counted as written (before: both, into the deleted file)');
  t.equal(log.dropped, 2, 'the two waiting lines are counted as dropped');
});

const MNT = join(tmpdir(), `driftguard-full-${process.pid}`);
const canMount = process.getuid?.() === 0 && (() => {
  try { mkdirSync(MNT, { recursive: true }); execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', MNT]); execFileSync('umount', [MNT]); return true; } catch { return false; }
})();

t.test('a disk all but full after a reopen: the waiting lines go one by one, and none is lost or miscounted', { skip: canMount ? false : 'needs root, to mount a 16 KiB tmpfs' }, async (t) => {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', MNT]);
  t.teardown(() => { try { execFileSync('umount', [MNT]); } catch { /* gone */ } });
  const file = join(MNT, 'decisions.log');
  const reports: unknown[][] = [];
  const log = new DecisionLog({ kind: 'file', file }, MAX, { report: (...a) => { reports.push(a); }, reopenMs: 300 });
  t.teardown(() => log.close());
  log.write('{"first":true}');
  log.flush();
  t.ok(await until(() => log.lines === 1));
  // Another writer fills the disk; the log's next write fails.
  const filler = openSync(join(MNT, 'other.log'), 'w');
  try { for (;;) writeSync(filler, Buffer.alloc(4096, 'x')); } catch (err) { t.equal((err as NodeJS.ErrnoException).code, 'ENOSPC', 'disk full'); }
  log.write('{"fill":"' + 'f'.repeat(6000) + '"}');
  log.flush();
  t.ok(await until(() => reports.length === 1), 'the failure is reported');
  const droppedBefore = log.dropped;
  for (let i = 0; i < 20; i++) log.write(`{"n":${i},"pad":"${'p'.repeat(1000)}"}`);
  // The other writer frees one page: the disk is still all but full.
  ftruncateSync(filler, Math.max(0, readFileSync(join(MNT, 'other.log')).length - 4096));
  closeSync(filler);
  await new Promise((r) => setTimeout(r, 2_000));
  const whole = readFileSync(file, 'utf8').split('\n').filter((l) => /^\{"n":\d+,"pad":"p+"\}$/.test(l)).length;
  // Before: the first line probed, the other nineteen handed over in one write that failed
  // part-way, all counted as dropped though some were in the file.
  t.equal(log.dropped - droppedBefore, 0, 'none of the waiting lines is lost');
  t.equal(log.lines - 1 + log.fill().entries, 20, 'each written, or still waiting');
  t.equal(log.lines - 1, whole, 'the lines counted as written are the lines in the file');
});

t.test('a file replaced by a named pipe without a reader does not stop the process: refused as at start', { skip: spawnSync('mkfifo', ['--version']).status === 0 ? false : 'needs mkfifo' }, async (t) => {
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(new URL('./fifo-log-child.ts', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  t.teardown(() => { child.kill('SIGKILL'); });
  t.ok(await until(() => out.includes('writing'), 5_000), 'the line is written after the pipe was put in place');
  const after = () => out.split('writing\n')[1] ?? '';
  // Before: no tick after it, the event loop stuck in open(2) until a reader came. Ticks
  // counted, not timed: a busy machine may take longer to print them.
  t.ok(await until(() => (after().match(/tick/g) ?? []).length >= 3, 10_000), 'the event loop kept turning');
  t.ok(await until(() => /report true not a regular file/.test(after()), 10_000), 'and the failed output is reported');
});

t.test('a file truncated in place (copytruncate) is written on from its new end', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-log-'));
  const file = join(dir, 'decisions.log');
  const log = new DecisionLog({ kind: 'file', file }, MAX);
  t.teardown(() => log.close());
  log.write('{"n":0}');
  log.flush();
  // Written before the truncation (a write still under way would land after it).
  t.ok(await until(() => log.lines === 1), 'written');
  truncateSync(file, 0);
  log.write('{"n":1}');
  log.flush();
  t.ok(await until(() => log.lines === 2), 'written');
  t.equal(readFileSync(file, 'utf8'), '{"n":1}\n', 'no hole of zeros where the old lines were');
});
