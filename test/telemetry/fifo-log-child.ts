// Child of decision-log.test.ts: a decision log file replaced by a named pipe with no reader (a
// log shipper's FIFO whose reader is not there yet); prints a tick every 100 ms, so that the
// test sees whether the event loop still turns after the log's next rotation check.
import { mkdtempSync, unlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DecisionLog } from '../../proxy/telemetry/decision-log.ts';

const file = join(mkdtempSync(join(tmpdir(), 'driftguard-fifo-')), 'decisions.log');
const log = new DecisionLog({ kind: 'file', file }, 65_536, { report: (failed, error) => process.stdout.write(`report ${failed} ${error}\n`) });
log.write('{"n":0}');
log.flush();
setInterval(() => process.stdout.write('tick\n'), 100);
setTimeout(() => {
  unlinkSync(file);
  execFileSync('mkfifo', [file]);
  // Past the once-a-second look at the path.
  setTimeout(() => { process.stdout.write('writing\n'); log.write('{"n":1}'); log.flush(); }, 1_200);
}, 300);
// Never outlives its test (nor runs on if started alone): stuck in open(2), it is killed instead.
setTimeout(() => process.exit(0), 6_000).unref();
