// Decoding OTLP/protobuf trace exports in tests, with protobufjs and the transcribed schema
// (otlp-trace.proto), into the OTLP/JSON shape (hex ids, camelCase fields, int64 as string)
// so that one set of assertions reads both protocols.

import { readFileSync } from 'node:fs';
import protobuf from 'protobufjs';

const root = protobuf.parse(readFileSync(new URL('./otlp-trace.proto', import.meta.url), 'utf8'), { keepCase: false }).root;
export const ExportTraceServiceRequest = root.lookupType('ExportTraceServiceRequest');
const ExportTraceServiceResponse = root.lookupType('ExportTraceServiceResponse');

/** A collector's answer, OTLP/protobuf: empty, or a partial success (`rejected` spans, an error message). */
export function encodeTraceResponse(partial?: { rejected: number; message: string }): Uint8Array {
  const body = partial ? { partialSuccess: { rejectedSpans: partial.rejected, errorMessage: partial.message } } : {};
  return ExportTraceServiceResponse.encode(ExportTraceServiceResponse.create(body)).finish();
}

const ID_FIELDS = new Set(['traceId', 'spanId', 'parentSpanId']);

function hexIds(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(hexIds);
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    out[k] = ID_FIELDS.has(k) && typeof x === 'string' ? Buffer.from(x, 'base64').toString('hex') : hexIds(x);
  }
  return out;
}

/** An ExportTraceServiceRequest as OTLP/JSON would carry it. */
export function decodeTraces(body: Uint8Array): any {
  const message = ExportTraceServiceRequest.decode(body);
  return hexIds(ExportTraceServiceRequest.toObject(message, { longs: String, bytes: String, defaults: false }));
}
