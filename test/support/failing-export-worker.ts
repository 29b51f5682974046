// An export thread that fails: it says it started (as a warning, the one message the request
// thread passes on as text), then exits with code 3 on the first spans it is sent. For
// test/telemetry/export-thread.test.ts: the real one does not fail on demand.

import { parentPort } from 'node:worker_threads';
import type { FromExport, ToExport } from '../../proxy/telemetry/export-thread.ts';

parentPort!.postMessage({ type: 'warn', message: 'started' } satisfies FromExport);
parentPort!.on('message', (m: ToExport) => {
  if (m.type === 'spans') process.exit(3);
});
