// The export thread's entry (a worker_threads Worker started by export-thread.ts): builds the
// spans it is sent, batches and exports them (export.ts), and reports back what it settled.
// Its reports are coalesced: one message per turn of its event loop at most, not one per
// span.

import { parentPort, workerData } from 'node:worker_threads';
import { spanExport } from './export.ts';
import type { ExportSettings, FromExport, ToExport } from './export-thread.ts';

const port = parentPort!;
const pending = { exported: 0, queueFull: 0, exportFailed: 0, rejected: 0 };
let scheduled = false;

function send(message: FromExport): void {
  port.postMessage(message);
}

function report(): void {
  scheduled = false;
  send({ type: 'settled', ...pending });
  pending.exported = 0; pending.queueFull = 0; pending.exportFailed = 0; pending.rejected = 0;
}

const settings = workerData as ExportSettings;
// Messages sent meanwhile wait in the port until its listener is added below.
const spans = await spanExport(settings.traces, {
  settled(exported, queueFull, exportFailed, rejected = 0) {
    pending.exported += exported; pending.queueFull += queueFull; pending.exportFailed += exportFailed; pending.rejected += rejected;
    if (!scheduled) { scheduled = true; setImmediate(report); }
  },
  failed(message) { send({ type: 'warn', message }); },
});

port.on('message', (m: ToExport) => {
  if (m.type === 'spans') { spans.add(m.sources); return; }
  void spans.shutdown(settings.shutdownFlushMs).then(() => {
    if (scheduled) report();
    send({ type: 'flushed' });
    // With its port closed the thread has nothing left to do and ends by itself, after its
    // last report and its stdout (the console exporter's output) have reached the request
    // thread, which waits for that end.
    port.close();
  });
});
