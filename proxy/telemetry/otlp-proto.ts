// The OTLP/protobuf encoding of a batch of spans (ExportTraceServiceRequest), in place of the
// SDK's ProtobufTraceSerializer for the default protocol, http/protobuf. The SDK's encoder is
// general and correct, but it walks every string three times in JavaScript, a character at
// a time (to size it, to test it for ASCII, to copy it); with two spans per request, thirty
// attributes and a span event per check, that was a quarter of driftguard's CPU time under
// load (README, Performance). This one writes each string once with Buffer's native UTF-8
// and hex writers, and encodes the parts that repeat (a check event's name and attributes,
// the resource, the scope) once and copies the bytes after.
//
// Same wire format, field for field, as the SDK's serializer (opentelemetry-proto
// trace/v1/trace.proto, common/v1/common.proto): test/telemetry/otlp-proto.test.ts checks
// that both produce the same bytes, and decodes both with the OTLP schema
// (test/support/otlp-trace.proto).

import type { Attributes, AttributeValue, HrTime, Link, SpanContext, SpanKind, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';
import { ProtobufTraceSerializer, type ISerializer, type IExportTraceServiceResponse } from '@opentelemetry/otlp-transformer';

const LEN = 2;
const VARINT = 0;
const I64 = 1;
const I32 = 5;

/** A growing buffer with protobuf's primitives. Nested messages reserve one length byte and move their bytes only when the length needs more. */
class Writer {
  buf = Buffer.allocUnsafe(64 * 1024);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  varint(v: number): void {
    if (v < 0) { this.#negative(v); return; }
    this.ensure(10);
    const buf = this.buf;
    while (v > 127) {
      buf[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    buf[this.pos++] = v;
  }

  /** int64 two's complement, as protobuf writes a negative int64: ten bytes. */
  #negative(v: number): void {
    let u = BigInt.asUintN(64, BigInt(v));
    this.ensure(10);
    while (u > 127n) {
      this.buf[this.pos++] = Number(u & 127n) | 128;
      u >>= 7n;
    }
    this.buf[this.pos++] = Number(u);
  }

  tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  string(s: string): void {
    const len = s.length;
    // Short ASCII strings (most attribute keys and values) are copied here: two calls into
    // C++ per string cost more than the loop. Anything else goes to Buffer's UTF-8 writer.
    if (len < 128) {
      this.ensure(len + 1);
      const buf = this.buf;
      const start = this.pos;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c > 127) break;
        buf[start + 1 + i] = c;
      }
      if (i === len) {
        buf[start] = len;
        this.pos = start + 1 + len;
        return;
      }
    }
    const n = Buffer.byteLength(s, 'utf8');
    this.varint(n);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }

  /** A hex id (trace, span) as its bytes. */
  hex(id: string): void {
    const n = id.length >> 1;
    this.varint(n);
    this.ensure(n);
    this.pos += this.buf.write(id, this.pos, n, 'hex');
  }

  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  /**
   * fixed64 nanoseconds since the epoch, as two 32-bit halves: seconds * 1e9 passes 2^53, so
   * the seconds are split at 16 bits, each part's product is exact, and the carries are added
   * by hand (the SDK's writeHrTimeAsFixed64 does the same; a BigInt per timestamp costs more).
   */
  time(t: HrTime): void {
    const [seconds, nanos] = t;
    const fromLow = (seconds & 0xffff) * 1e9;
    const fromHigh = ((seconds / 0x10000) >>> 0) * 1e9;
    const low = (fromLow >>> 0) + (((fromHigh & 0xffff) * 0x10000) >>> 0) + nanos;
    const high = Math.floor(fromLow / 0x100000000) + ((fromHigh / 0x10000) >>> 0) + Math.floor(low / 0x100000000);
    this.fixed32(low);
    this.fixed32(high);
  }

  fixed32(v: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
  }

  double(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  /** Start a length-delimited field's content; returns where it starts. */
  open(): number {
    this.ensure(1);
    this.pos += 1;
    return this.pos;
  }

  close(start: number): void {
    const len = this.pos - start;
    if (len < 128) { this.buf[start - 1] = len; return; }
    let extra = 0;
    for (let v = len >>> 7; v > 0; v >>>= 7) extra++;
    this.ensure(extra);
    this.buf.copyWithin(start + extra, start, this.pos);
    const end = this.pos + extra;
    this.pos = start - 1;
    this.varint(len);
    this.pos = end;
  }

  bytes(): Uint8Array {
    return new Uint8Array(this.buf.buffer, this.buf.byteOffset, this.pos).slice();
  }
}

function anyValue(w: Writer, value: AttributeValue | Record<string, unknown> | Uint8Array | null | undefined): void {
  switch (typeof value) {
    case 'string':
      w.tag(1, LEN); w.string(value); return;
    case 'boolean':
      w.tag(2, VARINT); w.varint(value ? 1 : 0); return;
    case 'number':
      if (Number.isInteger(value) && value >= -(2 ** 63) && value < 2 ** 63) { w.tag(3, VARINT); w.varint(value); } else { w.tag(4, I64); w.double(value); }
      return;
  }
  if (value instanceof Uint8Array) { w.tag(7, LEN); w.varint(value.length); w.raw(value); return; }
  if (Array.isArray(value)) {
    w.tag(5, LEN);
    const array = w.open();
    for (const item of value) {
      w.tag(1, LEN);
      const v = w.open();
      anyValue(w, item);
      w.close(v);
    }
    w.close(array);
    return;
  }
  if (typeof value === 'object' && value !== null) {
    w.tag(6, LEN);
    const list = w.open();
    for (const k in value) {
      if (!Object.hasOwn(value, k)) continue;
      w.tag(1, LEN);
      keyValue(w, k, (value as Record<string, AttributeValue>)[k]);
    }
    w.close(list);
  }
}

/** A KeyValue message (its tag is the caller's). */
function keyValue(w: Writer, key: string, value: AttributeValue | undefined): void {
  const kv = w.open();
  w.tag(1, LEN); w.string(key);
  w.tag(2, LEN);
  const v = w.open();
  anyValue(w, value);
  w.close(v);
  w.close(kv);
}

function attributes(w: Writer, attrs: Attributes, field: number): void {
  for (const key in attrs) {
    if (!Object.hasOwn(attrs, key)) continue;
    w.tag(field, LEN);
    keyValue(w, key, attrs[key]);
  }
}

/** Span flags: the W3C trace flags, and whether the parent is known to be remote. */
function flags(traceFlags: number, isRemote: boolean | undefined): number {
  return (traceFlags & 0xff) | 0x100 | (isRemote ? 0x200 : 0);
}

/**
 * An event's name, attributes and dropped count, encoded once per distinct event: a span
 * event per check means the same few dozen events on every request. Only events whose
 * attributes object is frozen are cached: a frozen object is shared and never changes
 * (spans.ts keeps one per check outcome), so it can key the cache without being read.
 */
const eventTails = new WeakMap<Attributes, Map<string, Uint8Array>>();
const MAX_TAILS_PER_ATTRIBUTES = 256;
const scratch = new Writer();

function eventTail(e: TimedEvent): Uint8Array | undefined {
  const attrs = e.attributes;
  if (attrs === undefined || !Object.isFrozen(attrs) || e.droppedAttributesCount) return undefined;
  let byName = eventTails.get(attrs);
  if (!byName) eventTails.set(attrs, (byName = new Map()));
  let tail = byName.get(e.name);
  if (tail) return tail;
  scratch.pos = 0;
  eventTailInto(scratch, e);
  tail = scratch.bytes();
  if (byName.size < MAX_TAILS_PER_ATTRIBUTES) byName.set(e.name, tail);
  return tail;
}

function eventTailInto(w: Writer, e: TimedEvent): void {
  w.tag(2, LEN); w.string(e.name);
  if (e.attributes) attributes(w, e.attributes, 3);
  w.tag(4, VARINT); w.varint(e.droppedAttributesCount ?? 0);
}

function event(w: Writer, e: TimedEvent): void {
  w.tag(11, LEN);
  const start = w.open();
  w.tag(1, I64); w.time(e.time);
  const tail = eventTail(e);
  if (tail) w.raw(tail); else eventTailInto(w, e);
  w.close(start);
}

function link(w: Writer, l: { context: SpanContext; attributes?: Attributes; droppedAttributesCount?: number }): void {
  w.tag(13, LEN);
  const start = w.open();
  w.tag(1, LEN); w.hex(l.context.traceId);
  w.tag(2, LEN); w.hex(l.context.spanId);
  const state = l.context.traceState?.serialize();
  if (state) { w.tag(3, LEN); w.string(state); }
  if (l.attributes) attributes(w, l.attributes, 4);
  w.tag(5, VARINT); w.varint(l.droppedAttributesCount ?? 0);
  w.tag(6, I32); w.fixed32(flags(l.context.traceFlags, l.context.isRemote));
  w.close(start);
}

/**
 * A span that can name its attributes one by one (spans.ts): they are written as they are
 * named, and the attributes object, which costs as much again to build, is never made.
 */
interface AttributeSource {
  eachAttribute(visit: (key: string, value: AttributeValue) => void): void;
}

/** The writer spanAttribute writes to: span() sets it just before calling eachAttribute. */
let attributeWriter = scratch;

function spanAttribute(key: string, value: AttributeValue): void {
  attributeWriter.tag(9, LEN);
  keyValue(attributeWriter, key, value);
}

function span(w: Writer, s: ReadableSpan): void {
  w.tag(2, LEN);
  const start = w.open();
  const ctx = s.spanContext();
  w.tag(1, LEN); w.hex(ctx.traceId);
  w.tag(2, LEN); w.hex(ctx.spanId);
  const state = ctx.traceState?.serialize();
  if (state) { w.tag(3, LEN); w.string(state); }
  if (s.parentSpanContext?.spanId) { w.tag(4, LEN); w.hex(s.parentSpanContext.spanId); }
  w.tag(5, LEN); w.string(s.name);
  // SpanKind in the API counts from INTERNAL = 0; the proto reserves 0 for UNSPECIFIED.
  if (s.kind != null) { w.tag(6, VARINT); w.varint(s.kind + 1); }
  w.tag(7, I64); w.time(s.startTime);
  w.tag(8, I64); w.time(s.endTime);
  const source = s as ReadableSpan & Partial<AttributeSource>;
  if (typeof source.eachAttribute === 'function') {
    attributeWriter = w;
    source.eachAttribute(spanAttribute);
  } else attributes(w, s.attributes, 9);
  w.tag(10, VARINT); w.varint(s.droppedAttributesCount);
  for (const e of s.events) event(w, e);
  w.tag(12, VARINT); w.varint(s.droppedEventsCount);
  for (const l of s.links) link(w, l);
  w.tag(14, VARINT); w.varint(s.droppedLinksCount);
  w.tag(15, LEN);
  const status = w.open();
  if (s.status.message) { w.tag(2, LEN); w.string(s.status.message); }
  w.tag(3, VARINT); w.varint(s.status.code);
  w.close(status);
  w.tag(16, I32); w.fixed32(flags(ctx.traceFlags, s.parentSpanContext?.isRemote));
  w.close(start);
}

/** Resource and scope messages never change for a driftguard: encoded once each. */
const encodedResources = new WeakMap<Resource, Uint8Array>();
const encodedScopes = new WeakMap<InstrumentationScope, Uint8Array>();

/** `field`'s message as `body` writes it, from `cache` or encoded now (and kept when `keep`). */
function encodedOnce<K extends object>(cache: WeakMap<K, Uint8Array>, key: K, field: number, body: (w: Writer) => void, keep = true): Uint8Array {
  let bytes = cache.get(key);
  if (bytes) return bytes;
  const w = new Writer();
  w.tag(field, LEN);
  const start = w.open();
  body(w);
  w.close(start);
  bytes = w.bytes();
  if (keep) cache.set(key, bytes);
  return bytes;
}

function resourceBytes(r: Resource): Uint8Array {
  // A resource whose detectors are still running may gain attributes: do not keep it yet.
  return encodedOnce(encodedResources, r, 1, (w) => {
    attributes(w, r.attributes, 1);
    w.tag(2, VARINT); w.varint(0);
  }, !r.asyncAttributesPending);
}

function scopeBytes(s: InstrumentationScope): Uint8Array {
  return encodedOnce(encodedScopes, s, 1, (w) => {
    w.tag(1, LEN); w.string(s.name);
    if (s.version) { w.tag(2, LEN); w.string(s.version); }
  });
}

const ahead = new Writer();
const ENCODED_ONLY = 'a span encoded ahead is read by driftguard\'s encoder only: its attributes, events and links are in its bytes';

/**
 * A span once encoded ahead (preEncode): its bytes, and what the batch processor and
 * encodeSpans read of it (its context, for sampling; its resource and scope, for grouping).
 * What it was built from is let go: a span waits in the queue until its batch is exported (a
 * whole queue, 4,096 spans, while a collector is down), and its source was most of what it
 * held. Its attributes, events and links are only in its bytes: reading them throws.
 */
class EncodedSpan implements ReadableSpan {
  readonly name: string;
  readonly kind: SpanKind;
  readonly parentSpanContext?: SpanContext;
  readonly startTime: HrTime;
  readonly endTime: HrTime;
  readonly duration: HrTime;
  readonly status: SpanStatus;
  readonly ended = true;
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  readonly droppedAttributesCount: number;
  readonly droppedEventsCount: number;
  readonly droppedLinksCount: number;
  readonly bytes: Uint8Array;
  readonly #context: SpanContext;

  constructor(s: ReadableSpan, bytes: Uint8Array) {
    this.name = s.name; this.kind = s.kind; this.#context = s.spanContext();
    if (s.parentSpanContext) this.parentSpanContext = s.parentSpanContext;
    this.startTime = s.startTime; this.endTime = s.endTime; this.duration = s.duration; this.status = s.status;
    this.resource = s.resource; this.instrumentationScope = s.instrumentationScope;
    this.droppedAttributesCount = s.droppedAttributesCount; this.droppedEventsCount = s.droppedEventsCount; this.droppedLinksCount = s.droppedLinksCount;
    this.bytes = bytes;
  }

  spanContext(): SpanContext { return this.#context; }
  get attributes(): Attributes { throw new Error(ENCODED_ONLY); }
  get events(): TimedEvent[] { throw new Error(ENCODED_ONLY); }
  get links(): Link[] { throw new Error(ENCODED_ONLY); }
}

/**
 * Encodes spans as they arrive, so that exporting their batch is a copy of bytes, and
 * returns them as EncodedSpans to queue in their place. The encoding is most of the export
 * thread's work: done for a whole batch at once (512 spans by default), it took the thread's
 * core for milliseconds at a time, while the request thread, the upstream and the load share
 * two cores; done per message from the request thread (up to 64 spans), it is spread over the
 * batch's life. A span's bytes do not depend on its batch, so encodeSpans writes the same
 * bytes either way (test/telemetry/otlp-proto.test.ts). The spans of a message share one
 * buffer, kept until the last of them is exported.
 */
export function preEncode(spans: readonly ReadableSpan[]): ReadableSpan[] {
  const w = ahead;
  w.pos = 0;
  const ends: number[] = [];
  for (const s of spans) { span(w, s); ends.push(w.pos); }
  const all = w.bytes();
  const encoded: ReadableSpan[] = [];
  let start = 0;
  for (let i = 0; i < spans.length; i++) {
    encoded.push(new EncodedSpan(spans[i]!, all.subarray(start, ends[i])));
    start = ends[i]!;
  }
  if (w.buf.length > 4 * 1024 * 1024) w.buf = Buffer.allocUnsafe(64 * 1024);
  return encoded;
}

/**
 * A span encoded ahead with a copy of its own bytes: it no longer keeps its message's shared
 * buffer alive (what export.ts does for the spans it keeps of a message it partly refused).
 */
export function detached(span: ReadableSpan): ReadableSpan {
  return span instanceof EncodedSpan ? new EncodedSpan(span, span.bytes.slice()) : span;
}

/** The bytes a span was encoded to ahead (preEncode), or undefined if it was not. */
export function encodedLength(span: ReadableSpan): number | undefined {
  return span instanceof EncodedSpan ? span.bytes.length : undefined;
}

const out = new Writer();

export function encodeSpans(spans: readonly ReadableSpan[]): Uint8Array {
  // Grouped by resource, then scope, in order of first appearance, as the SDK does.
  const byResource = new Map<Resource, Map<InstrumentationScope, ReadableSpan[]>>();
  for (const s of spans) {
    let scopes = byResource.get(s.resource);
    if (!scopes) byResource.set(s.resource, (scopes = new Map()));
    let list = scopes.get(s.instrumentationScope);
    if (!list) scopes.set(s.instrumentationScope, (list = []));
    list.push(s);
  }
  const w = out;
  w.pos = 0;
  for (const [resource, scopes] of byResource) {
    w.tag(1, LEN);
    const rs = w.open();
    w.raw(resourceBytes(resource));
    for (const [scope, list] of scopes) {
      w.tag(2, LEN);
      const ss = w.open();
      w.raw(scopeBytes(scope));
      for (const s of list) {
        if (s instanceof EncodedSpan) w.raw(s.bytes); else span(w, s);
      }
      if (scope.schemaUrl) { w.tag(3, LEN); w.string(scope.schemaUrl); }
      w.close(ss);
    }
    if (resource.schemaUrl) { w.tag(3, LEN); w.string(resource.schemaUrl); }
    w.close(rs);
  }
  const bytes = w.bytes();
  // One large batch must not keep a large buffer for the life of the process.
  if (w.buf.length > 4 * 1024 * 1024) w.buf = Buffer.allocUnsafe(64 * 1024);
  return bytes;
}

export const traceSerializer: ISerializer<ReadableSpan[], IExportTraceServiceResponse> = {
  serializeRequest: encodeSpans,
  deserializeResponse: (data) => ProtobufTraceSerializer.deserializeResponse(data),
};
