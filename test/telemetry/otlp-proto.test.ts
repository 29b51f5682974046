// driftguard's span encoder (proxy/telemetry/otlp-proto.ts) against the SDK's own
// ProtobufTraceSerializer, the reference: for the same spans the bytes must be identical,
// and both must decode with the OTLP schema to the same request. The spans cover what the
// encoder does differently: strings written natively (non-ASCII, lengths that need two and
// three length bytes), cached check events, negative and large integers, doubles, arrays,
// byte values, trace state, links, a remote parent, and a batch larger than its buffer.

import t from 'tap';
import { SpanKind, SpanStatusCode, TraceFlags, type Attributes, type SpanContext } from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';
import { detached, encodeSpans, encodedLength, preEncode } from '../../proxy/telemetry/otlp-proto.ts';
import { decodeTraces } from '../support/otlp.ts';
import { spansOf, type SpanSource } from '../../proxy/telemetry/spans.ts';
import type { DecisionRecord } from '../../proxy/telemetry/record.ts';

const resource = resourceFromAttributes({ 'service.name': 'driftguard-test', 'host.name': 'hôte-1', 'process.pid': 4242 });
const otherResource = resourceFromAttributes({ 'service.name': 'other' });
const scope = { name: 'driftguard' };
const versioned = { name: 'driftguard', version: '1.2.3', schemaUrl: 'https://opentelemetry.io/schemas/1.30.0' };

let n = 0;
function id(bytes: number): string {
  n++;
  return (n.toString(16).padStart(4, '0') + 'a1b2c3d4e5f60718293a4b5c6d7e8f90').slice(0, bytes * 2);
}

function span(over: Partial<ReadableSpan> & { attributes?: Attributes; events?: TimedEvent[]; ctx?: Partial<SpanContext> } = {}): ReadableSpan {
  const ctx: SpanContext = { traceId: id(16), spanId: id(8), traceFlags: TraceFlags.SAMPLED, ...over.ctx };
  const { ctx: _c, ...rest } = over;
  return {
    name: 'GET /v1/orders/{id}', kind: SpanKind.SERVER, spanContext: () => ctx,
    startTime: [1_795_000_000, 123_456_789], endTime: [1_795_000_001, 999_999_999], duration: [1, 876_543_210],
    status: { code: SpanStatusCode.UNSET }, attributes: {}, links: [], events: [], ended: true,
    resource, instrumentationScope: scope, droppedAttributesCount: 0, droppedEventsCount: 0, droppedLinksCount: 0,
    ...rest,
  } as ReadableSpan;
}

// Frozen, as spans.ts makes them: the encoder caches the encoding of frozen attribute sets.
const checkEvent = (name: string, outcome: string, reason?: string): TimedEvent => ({
  name, time: [1_795_000_000, 500_000_000],
  attributes: Object.freeze(reason ? { 'driftguard.check.outcome': outcome, 'driftguard.check.reason': reason } : { 'driftguard.check.outcome': outcome }),
});

const cases: Record<string, ReadableSpan[]> = {
  'a decision span as driftguard makes it': [span({
    attributes: {
      'http.request.method': 'GET', 'url.scheme': 'http', 'server.address': 'api.local', 'server.port': 8080,
      'http.route': '/v1/orders/{id}', 'url.path': '/v1/orders/42', 'http.response.status_code': 200,
      'driftguard.decision': 'allow', 'driftguard.enforced': true, 'driftguard.warnings': ['deprecated-operation', 'stale-contract'],
    },
    events: [checkEvent('canonical-path', 'continue'), checkEvent('operation', 'continue'), checkEvent('contract', 'warn', 'stale-contract'), checkEvent('operation', 'continue')],
    ctx: { traceState: new TraceState('vendor=abc,other=1') },
    parentSpanContext: { traceId: id(16), spanId: id(8), traceFlags: 1, isRemote: true },
  })],
  'strings: non-ASCII, and lengths needing two and three length bytes': [span({
    name: 'naïve ✓ 名前 🚀',
    attributes: { 'two.bytes': 'x'.repeat(200), 'three.bytes': 'y'.repeat(20_000), 'mixed': 'é'.repeat(100) + '😀'.repeat(40), '': '' },
    events: [{ name: 'é'.repeat(70), time: [1, 2], attributes: { big: 'z'.repeat(300) } }],
    status: { code: SpanStatusCode.ERROR, message: 'upstream-unavailable — ✗' },
  })],
  'numbers, booleans, arrays, bytes, nested values': [span({
    kind: SpanKind.CLIENT,
    attributes: {
      zero: 0, small: 127, two: 128, big: 2 ** 40 + 7, max: Number.MAX_SAFE_INTEGER, negative: -1, veryNegative: -(2 ** 40),
      double: 3.25, nan: Number.NaN, inf: Number.POSITIVE_INFINITY, t: true, f: false,
      strings: ['a', 'b', ''], numbers: [1, -2, 2.5], bools: [true, false], empty: [],
      bytes: new Uint8Array([0, 1, 255]) as unknown as string,
    },
  })],
  'links, dropped counts, unsampled flags, no kind': [span({
    kind: SpanKind.INTERNAL,
    ctx: { traceFlags: TraceFlags.NONE },
    links: [{ context: { traceId: id(16), spanId: id(8), traceFlags: 1, isRemote: true, traceState: new TraceState('k=v') }, attributes: { why: 'retry' }, droppedAttributesCount: 2 }],
    droppedAttributesCount: 3, droppedEventsCount: 4, droppedLinksCount: 5,
    events: [{ name: 'no attributes', time: [5, 6] }, { name: 'dropped', time: [5, 6], attributes: { a: 'b' }, droppedAttributesCount: 1 }],
    parentSpanContext: { traceId: id(16), spanId: id(8), traceFlags: 1, isRemote: false },
  })],
  'two resources, two scopes, and a batch larger than the 64 KiB buffer': [
    ...Array.from({ length: 300 }, (_, i) => span({
      instrumentationScope: i % 3 === 0 ? versioned : scope,
      resource: i % 5 === 0 ? otherResource : resource,
      attributes: { 'url.path': `/v1/items/${i}`, 'driftguard.detail': 'd'.repeat(i) },
      events: [checkEvent('credential', i % 2 ? 'continue' : 'deny', i % 2 ? undefined : 'invalid-credential')],
    })),
  ],
  'timestamps at the edges of the 64-bit split': [
    span({ startTime: [0, 0], endTime: [0, 1] }),
    span({ startTime: [65_535, 999_999_999], endTime: [65_536, 0] }),
    span({ startTime: [4_294_967_295, 999_999_999], endTime: [4_294_967_295, 999_999_999], events: [{ name: 'late', time: [3_000_000_000, 123] }] }),
    span({ startTime: [1_795_000_000, 4_294_967], endTime: [1_795_000_000, 999_999_999] }),
  ],
  'an empty batch': [],
};

// driftguard's own spans name their attributes one by one (eachAttribute), which the encoder
// writes as they come; the SDK's serializer reads the attributes object built from the same
// calls. Sources with every optional field, extras, a 5xx and a failed upstream call.
function source(over: Partial<DecisionRecord>, call?: Partial<NonNullable<SpanSource['call']>>): SpanSource {
  const record: DecisionRecord = {
    time: '2026-11-26T10:00:00.000Z', timeMs: 1_795_600_000_000, traceId: id(16), spanId: id(8),
    decision: 'allow', enforced: true, reason: 'deprecated-operation', warnings: ['deprecated-operation'], detail: 'listOrders is deprecated',
    method: 'GET', path: '/v1/orders', route: '/v1/orders', operation: 'listOrders', sensitivity: 'low', deprecated: true,
    sunset: '2027-01-01T00:00:00.000Z', replacement: '/v2/orders', consumer: 'spiffe://test.local/ns/a/sa/agent', consumerKind: 'automation',
    owner: 'team-a', registered: true, issuer: 'https://issuer.test', jti: 'j-1', declaredContract: '2026-06', currentContract: '2026-09',
    changedIn: '2026-09', rules: 'abc123', status: 200, durationMs: 2.5, upstreamMs: 2, addedMs: 0.5,
    checks: [{ check: 'canonical-path', outcome: 'continue' }, { check: 'deprecation', outcome: 'warn', reason: 'deprecated-operation' }],
    extra: { 'delegation.chain': ['spiffe://a', 'spiffe://b'], 'task.id': 'task-1', 'monitor.count': 3, 'monitor.flag': false },
    ...over,
  };
  return {
    trace: { traceId: record.traceId, spanId: record.spanId, sampled: true, parent: { traceId: record.traceId, spanId: id(8), traceFlags: 1, isRemote: true }, traceState: 'vendor=abc' },
    facts: { method: 'GET', methodOriginal: 'get', serverAddress: 'api.local', serverPort: 8080, clientAddress: '10.0.0.1', protocolVersion: '1.1', userAgent: 'agent/1.0' },
    record, checksAtMs: record.timeMs + 0.25, endMs: record.timeMs + 2.5,
    call: { spanId: id(8), upstream: { address: '127.0.0.1', port: 9000, origin: 'http://127.0.0.1:9000' }, startMs: record.timeMs + 0.3, endMs: record.timeMs + 2.4, status: 200, ...call },
  };
}
const DRIFTGUARD_SPANS = 'driftguard\'s spans, attributes named one by one';
// The same ids on every call (id() counts from a fixed point here), so that every call gives the same bytes.
const driftguardSpans = () => {
  const saved = n;
  n = 0x1000;
  const spans = [
    source({}),
    source({ status: 502, decision: 'allow', reason: 'upstream-unavailable' }, { status: undefined, error: 'upstream-unavailable' }),
    source({ status: 403, decision: 'deny', route: undefined, operation: undefined, extra: undefined, warnings: [] }, { status: 404 }),
  ].flatMap((s) => spansOf({ resource, scope }, s));
  n = saved;
  return spans;
};
cases[DRIFTGUARD_SPANS] = driftguardSpans();

for (const [name, spans] of Object.entries(cases)) {
  t.test(name, async (t) => {
    // Twice: the second encoding reads the cached event, resource and scope bytes.
    for (const round of ['first', 'second']) {
      const ours = Buffer.from(encodeSpans(spans));
      const reference = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
      t.same(decodeTraces(ours), decodeTraces(reference), `${round} encoding: decodes to the same request`);
      t.ok(ours.equals(reference), `${round} encoding: the same bytes (${ours.length} and ${reference.length})`);
    }
  });
}

// The export thread encodes spans as they arrive (preEncode), a message at a time, and a
// batch then copies their bytes: a batch must come out the same, whether all, some or none
// of its spans were encoded ahead, and in whatever messages they came.
for (const [name, spans] of Object.entries(cases)) {
  t.test(`${name}, encoded ahead`, async (t) => {
    // Fresh spans each time (driftguard's are built anew: a class with private fields cannot
    // be copied), all with the same bytes.
    const copies = name === DRIFTGUARD_SPANS ? driftguardSpans : () => spans.map((s) => ({ ...s }));
    const reference = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
    const all = [...preEncode(copies().slice(0, 3)), ...preEncode(copies().slice(3))];
    t.ok(Buffer.from(encodeSpans(all)).equals(reference), 'every span encoded ahead, in two messages: the same bytes');
    const some = copies();
    const odd = preEncode(some.filter((_, i) => i % 2 === 1));
    const mixed = some.map((s, i) => (i % 2 === 1 ? odd[(i - 1) / 2]! : s));
    t.ok(Buffer.from(encodeSpans(mixed)).equals(reference), 'every other span encoded ahead: the same bytes');
    // A message encoded ahead must not be overwritten by the next one's (they share a writer).
    const first = preEncode(copies());
    preEncode(copies());
    t.ok(Buffer.from(encodeSpans(first)).equals(reference), 'still the same bytes after another message was encoded');
  });
}

t.test('a span detached from its message holds only its own bytes, and encodes the same', async (t) => {
  // The export thread keeps some spans of a message it partly refused (maxQueueBytes): the
  // kept ones must not hold the refused ones' bytes alive through the shared buffer.
  const spans = preEncode(driftguardSpans());
  const reference = Buffer.from(encodeSpans(spans));
  const own = spans.map(detached);
  t.ok(spans.length > 1 && (spans[0] as unknown as { bytes: Uint8Array }).bytes.buffer === (spans[1] as unknown as { bytes: Uint8Array }).bytes.buffer, 'a message\'s spans share one buffer');
  t.ok(own.every((s) => (s as unknown as { bytes: Uint8Array }).bytes.buffer.byteLength === encodedLength(s)), 'each detached span\'s buffer is its own bytes only');
  t.ok(Buffer.from(encodeSpans(own)).equals(reference), 'and a batch of them is the same bytes');
  t.equal(own[0]!.spanContext(), spans[0]!.spanContext(), 'with what the processor reads');
});

t.test('a span encoded ahead keeps what the batch processor reads, and nothing it was built from', async (t) => {
  const [server] = driftguardSpans();
  const [encoded] = preEncode([server!]);
  t.equal(encoded!.spanContext(), server!.spanContext(), 'its context: the processor samples by it');
  t.equal(encoded!.resource, server!.resource, 'its resource and scope: the encoder groups by them');
  t.equal(encoded!.instrumentationScope, server!.instrumentationScope);
  t.equal(encoded!.name, server!.name);
  t.same(encoded!.status, server!.status);
  t.throws(() => encoded!.attributes, /encoded ahead/, 'its attributes are only in its bytes: read, they throw rather than lie');
  t.throws(() => encoded!.events, /encoded ahead/);
});

t.test('what is decoded is what was given', async (t) => {
  const [s] = cases['a decision span as driftguard makes it']!;
  const body = decodeTraces(encodeSpans([s!]));
  const out = body.resourceSpans[0].scopeSpans[0].spans[0];
  t.equal(out.traceId, s!.spanContext().traceId);
  t.equal(out.parentSpanId, s!.parentSpanContext!.spanId);
  t.equal(out.traceState, 'vendor=abc,other=1');
  t.equal(out.kind, 2, 'SERVER is 2 on the wire');
  t.equal(out.startTimeUnixNano, '1795000000123456789');
  t.same(out.attributes.find((a: any) => a.key === 'driftguard.warnings').value, { arrayValue: { values: [{ stringValue: 'deprecated-operation' }, { stringValue: 'stale-contract' }] } });
  t.same(out.events.map((e: any) => e.name), ['canonical-path', 'operation', 'contract', 'operation']);
  t.equal(out.flags, 0x301, 'sampled, and the parent is known to be remote');
});
