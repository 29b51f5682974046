// The span tests again, exported over OTLP/HTTP protobuf (the default protocol, and the one
// driftguard encodes itself: proxy/telemetry/otlp-proto.ts) instead of http/json, decoded
// by the receiver with protobufjs and the OTLP schema.

process.env.OTLP_PROTOCOL = 'http/protobuf';
await import('./spans.test.ts');
