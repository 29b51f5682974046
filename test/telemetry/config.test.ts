// Telemetry settings: the rules file over OTEL_* over defaults; bad values stop start-up with
// the variable or field named.

import t from 'tap';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRules } from '../../proxy/rules/load.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { telemetryConfig, telemetry } from '../../proxy/telemetry/index.ts';
import { startWithTelemetry } from './support.ts';

const rules = (patch: (r: Record<string, any>) => void = () => {}) =>
  loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', patch)));

t.test('defaults without env or rules', async (t) => {
  const c = telemetryConfig(rules(), {});
  t.match(c.traces, { exporter: 'otlp', protocol: 'http/protobuf', serviceName: 'driftguard', sampler: 'parentbased_always_on', samplerArg: 1, exportTimeoutMs: 10_000, maxQueueSize: 4096, maxExportBatchSize: 512, scheduledDelayMs: 1000 });
  t.equal(c.traces.url, undefined, 'the exporter reads its own endpoint variables');
  t.same(c.log.output, { kind: 'stdout' });
  t.equal(c.log.allowSampleRate, 1);
  t.equal(c.recent.size, 10_000);
});

t.test('OTEL_* variables configure, the rules file overrides', async (t) => {
  const env = { OTEL_TRACES_EXPORTER: 'console,otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_SERVICE_NAME: 'payments-sidecar', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25', OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_SCHEDULE_DELAY: '250', OTEL_EXPORTER_OTLP_TIMEOUT: '3000' };
  const fromEnv = telemetryConfig(rules(), env);
  t.match(fromEnv.traces, { exporter: 'console', protocol: 'http/json', serviceName: 'payments-sidecar', sampler: 'traceidratio', samplerArg: 0.25, maxQueueSize: 100, maxExportBatchSize: 64, scheduledDelayMs: 250, exportTimeoutMs: 3000 });
  const overridden = telemetryConfig(rules((r) => {
    r.telemetry = { traces: { exporter: 'otlp', protocol: 'http/protobuf', endpoint: 'http://collector:4318/', serviceName: 'x', sampler: 'always_on', exportTimeout: '1s', batch: { maxQueueSize: 10, scheduledDelay: '2s' } }, decisionLog: { output: 'decisions.log', allowSampleRate: 0.1 }, recent: { size: 5 } };
  }), env);
  t.match(overridden.traces, { exporter: 'otlp', protocol: 'http/protobuf', url: 'http://collector:4318/v1/traces', serviceName: 'x', sampler: 'always_on', exportTimeoutMs: 1000, maxQueueSize: 10, maxExportBatchSize: 10, scheduledDelayMs: 2000 });
  t.equal(overridden.log.output.kind, 'file');
  t.match((overridden.log.output as { file: string }).file, /\/decisions\.log$/);
  t.equal(overridden.recent.size, 5);
  const grpc = telemetryConfig(rules((r) => { r.telemetry = { traces: { protocol: 'grpc', endpoint: 'http://collector:4317' } }; }), {});
  t.equal(grpc.traces.url, 'http://collector:4317', 'grpc takes the endpoint as is');
});

t.test('bad values stop start-up, naming what is wrong', async (t) => {
  t.throws(() => telemetryConfig(rules(), { OTEL_TRACES_SAMPLER: 'sometimes' }), /OTEL_TRACES_SAMPLER="sometimes": must be one of/);
  t.throws(() => telemetryConfig(rules(), { OTEL_TRACES_EXPORTER: 'jaeger' }), /OTEL_TRACES_EXPORTER/);
  t.throws(() => telemetryConfig(rules(), { OTEL_TRACES_SAMPLER_ARG: '3' }), /OTEL_TRACES_SAMPLER_ARG/);
  // Longer than a Node.js timer can wait: it would fire after 1 ms and fail every export.
  t.throws(() => telemetryConfig(rules((r) => { r.telemetry = { traces: { batch: { scheduledDelay: '25d' } } }; }), {}), /scheduledDelay.*must be at most 24d/);
  // The export thread waits a little past the export timeout: near the timer limit that wait
  // fired at once, and every export that succeeded was counted as failed.
  t.throws(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TIMEOUT: String(2 ** 31 - 1) }), /^OTEL_EXPORTER_OTLP_TIMEOUT: must be at most 1h/);
  t.throws(() => telemetryConfig(rules((r) => { r.telemetry = { traces: { exportTimeout: '24d' } }; }), {}), /exportTimeout.*must be at most 1h/);
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { traces: { exportTimeout: '61m' } }; }))), /:\d+:\d+: telemetry\.traces\.exportTimeout: must be at most 1h/);
  t.equal(telemetryConfig(rules((r) => { r.telemetry = { traces: { exportTimeout: '1h' } }; }), {}).traces.exportTimeoutMs, 3_600_000, '1h is taken');
  // A compression the exporter does not know was dropped with a warning nobody saw, and spans went out uncompressed.
  for (const name of ['OTEL_EXPORTER_OTLP_COMPRESSION', 'OTEL_EXPORTER_OTLP_TRACES_COMPRESSION']) {
    for (const bad of ['gzp', 'GZIP', 'br']) t.throws(() => telemetryConfig(rules(), { [name]: bad }), new RegExp(`^${name}=".*": must be gzip or none`), `${name}=${bad}`);
    for (const good of ['gzip', 'none', ' gzip ']) t.doesNotThrow(() => telemetryConfig(rules(), { [name]: good }), `${name}=${good} is taken`);
  }
  // The collector's address from the environment is checked as the rules' own is: not left to
  // fail every export, or to send spans to the default endpoint.
  for (const name of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']) {
    t.throws(() => telemetryConfig(rules(), { [name]: 'not a url' }), new RegExp(`^${name}: is not a URL$`));
    t.throws(() => telemetryConfig(rules(), { [name]: 'collector:4318' }), new RegExp(`^${name}: must be an http:// or https:// URL$`));
    t.doesNotThrow(() => telemetryConfig(rules(), { [name]: 'http://collector:4318' }), `${name}: a URL is taken`);
    t.doesNotThrow(() => telemetryConfig(rules((r) => { r.telemetry = { traces: { exporter: 'none' } }; }), { [name]: 'not a url' }), `${name}: not read when nothing is exported`);
  }
  // Only the variable in effect, and over http only: gRPC endpoints may be host:port or unix:.
  t.doesNotThrow(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces', OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }), 'an OTEL_EXPORTER_OTLP_ENDPOINT the traces one overrides is not read');
  for (const endpoint of ['collector:4317', 'unix:///run/otel.sock']) {
    t.doesNotThrow(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint }), `grpc: ${endpoint}`);
  }
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { traces: { exporter: 'jaeger' } }; }))), /telemetry\.traces\.exporter/);
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { decisionLog: { allowSampleRate: 2 } }; }))), /telemetry\.decisionLog\.allowSampleRate/);
  // The environment's values are not rules problems: named by their variable, with a code the CLI prints without a stack.
  await t.rejects(telemetry(rules(), () => {}, { OTEL_TRACES_SAMPLER: 'sometimes' }), { code: 'ERR_CONFIG_INVALID', message: /^telemetry: OTEL_TRACES_SAMPLER="sometimes"/ });
  t.throws(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TIMEOUT: '0' }), /^OTEL_EXPORTER_OTLP_TIMEOUT: must be more than 0/);
  // Under 1 ms, as the rules' 0.4ms is (a duration rounded to 0): taken before, and every export then failed.
  t.throws(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TIMEOUT: '0.4' }), /^OTEL_EXPORTER_OTLP_TIMEOUT: must be at least 1 \(milliseconds; under 1 ms every export would time out at once and every span be dropped\)$/);
  const traces = t.throws(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '0.999', OTEL_EXPORTER_OTLP_TIMEOUT: '5000' })) as Error;
  t.match(traces.message, /^OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: must be at least 1 /, 'the variable in effect is named (the traces one wins)');
  t.notMatch(traces.message, /5000|0\.999/, 'and no variable\'s value');
  t.equal(telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_TIMEOUT: '1' }).traces.exportTimeoutMs, 1, '1 ms is taken');
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { traces: { exportTimeout: '0.4ms' } }; }))), /telemetry\.traces\.exportTimeout: must be more than 0/, 'as the rules refuse 0.4ms');
  // A number that is not one, or out of its field's bounds, is refused, not replaced by the default.
  for (const [name, value, message] of [
    ['OTEL_EXPORTER_OTLP_TIMEOUT', 'ten', /must be a number from 0/],
    ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', '-1', /must be a number from 0/],
    ['OTEL_BSP_SCHEDULE_DELAY', 'soon', /must be a number from 0/],
    ['OTEL_BSP_MAX_QUEUE_SIZE', '-5', /must be a whole number from 1 to 1000000/],
    ['OTEL_BSP_MAX_QUEUE_SIZE', '1.5', /must be a whole number/],
    ['OTEL_BSP_MAX_EXPORT_BATCH_SIZE', '0', /must be a whole number from 1 to 100000/],
    ['OTEL_TRACES_SAMPLER_ARG', 'half', /must be a number from 0 to 1/],
  ] as const) {
    t.throws(() => telemetryConfig(rules(), { [name]: value }), new RegExp(`^${name}="${value}": ${message.source}`), `${name}=${value}`);
  }
  await t.rejects(telemetry(rules(), () => {}, { OTEL_BSP_MAX_QUEUE_SIZE: '-5' }), { code: 'ERR_CONFIG_INVALID', message: /^telemetry: OTEL_BSP_MAX_QUEUE_SIZE="-5"/ });
  t.equal(telemetryConfig(rules(), { OTEL_BSP_MAX_QUEUE_SIZE: ' 100 ' }).traces.maxQueueSize, 100, 'a good value is taken');
});

t.test('the exporter\'s own variables are checked at start, naming the variable and never a header\'s value', async (t) => {
  for (const [env, message] of [
    [{ OTEL_EXPORTER_OTLP_HEADERS: 'x api key=SECRETVALUE' }, /^OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not key=value with a header name for its key$/],
    [{ OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'a=b,garbage' }, /^OTEL_EXPORTER_OTLP_TRACES_HEADERS: entry 2 is not key=value/],
    [{ OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=SEC%0ARET' }, /^OTEL_EXPORTER_OTLP_HEADERS: entry 1's value holds a line break or NUL$/],
    [{ OTEL_EXPORTER_OTLP_CERTIFICATE: '/nonexistent/ca.pem' }, /^OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read \/nonexistent\/ca\.pem: ENOENT$/],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'a=b,c,team=x' }, /^OTEL_RESOURCE_ATTRIBUTES: entry 2 is not key=value/],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'service.name=svc,team=a=b' }, /^OTEL_RESOURCE_ATTRIBUTES: entry 2 is not key=value/],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'team=%ZZ' }, /^OTEL_RESOURCE_ATTRIBUTES: entry 1 is not key=value/],
    [{ OTEL_RESOURCE_ATTRIBUTES: `team=${'x'.repeat(256)}` }, /^OTEL_RESOURCE_ATTRIBUTES: entry 1 is not key=value/],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: '::garbage::' }, /^OTEL_EXPORTER_OTLP_ENDPOINT: must be a URL, host:port or unix: for grpc$/],
  ] as const) {
    const err = t.throws(() => telemetryConfig(rules(), env), message, JSON.stringify(Object.keys(env))) as Error;
    t.notMatch(String(err?.message), /SECRET/, 'the value is not quoted');
  }
  t.doesNotThrow(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=abc%3D%3D,Authorization=Bearer%20t', OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod,k8s.pod.name=p,' }), 'good values are taken (a trailing comma too)');
  t.doesNotThrow(() => telemetryConfig(rules((r) => { r.telemetry = { traces: { exporter: 'none' } }; }), { OTEL_EXPORTER_OTLP_HEADERS: 'garbage' }), 'not read when nothing is exported');
  // What the gRPC exporter takes (it reads a bare host[:port] as https://): a docker-compose name too.
  for (const endpoint of ['otel_collector:4317', 'collector', 'dns:///collector:4317', 'unix:///run/otel.sock', 'https://collector:4317']) {
    t.doesNotThrow(() => telemetryConfig(rules(), { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint }), `grpc: ${endpoint}`);
  }
  t.equal(telemetryConfig(rules(), { OTEL_RESOURCE_ATTRIBUTES: 'service.name=a,service.name=b' }).traces.serviceName, 'b', 'the last service.name, as the SDK keeps it');
});

t.test('OTEL_SDK_DISABLED turns export off; a service.name in OTEL_RESOURCE_ATTRIBUTES is the service\'s name', async (t) => {
  t.equal(telemetryConfig(rules(), { OTEL_SDK_DISABLED: 'true' }).traces.exporter, 'none');
  t.equal(telemetryConfig(rules(), { OTEL_SDK_DISABLED: 'false' }).traces.exporter, 'otlp');
  t.equal(telemetryConfig(rules(), { OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs,deployment.environment=prod' }).traces.serviceName, 'from-attrs');
  t.equal(telemetryConfig(rules(), { OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs', OTEL_SERVICE_NAME: 'from-var' }).traces.serviceName, 'from-var', 'OTEL_SERVICE_NAME wins');
});

t.test('the rules\' telemetry values are rules problems: file, line and field, all at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-'));
  const file = writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => {
    r.telemetry = { traces: { exportTimeout: '0s', batch: { scheduledDelay: '25d' } }, decisionLog: { output: join(dir, 'no', 'such', 'dir', 'decisions.log') } };
  }));
  const err = t.throws(() => loadRules(file)) as { code?: string; problems?: { field: string; line: number; message: string }[] };
  t.equal(err.code, 'ERR_RULES_INVALID');
  const by = (field: string) => err.problems?.find((p) => p.field === field);
  t.match(by('telemetry.traces.exportTimeout'), { message: /must be more than 0/ }, 'a timeout of 0 fails every export');
  t.match(by('telemetry.traces.batch.scheduledDelay'), { message: /must be at most 24d/ });
  t.match(by('telemetry.decisionLog.output'), { message: /cannot open the decision log: the folder .*no\/such\/dir does not exist/ });
  t.ok(err.problems?.every((p) => p.line > 0), 'each at its line');
  for (const [endpoint, message] of [['http://u:OTELSECRET@collector:4318', /must carry no credentials/], ['http://u:OTELSECRET@collector:99999', /^is not a URL$/]] as const) {
    const bad = t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { traces: { endpoint } }; })))) as { problems?: { field: string; message: string }[] };
    t.match(bad.problems?.find((p) => p.field === 'telemetry.traces.endpoint'), { message }, endpoint.replace('OTELSECRET', '…'));
    t.notMatch(JSON.stringify(bad.problems), /OTELSECRET/, 'not quoted');
  }
  const asDir = (output: string) => () => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { decisionLog: { output } }; })));
  t.throws(asDir(dir), /telemetry\.decisionLog\.output: cannot open the decision log: .* is a directory/);
  // Opening a named pipe with no reader waited forever: start-up hung, deaf to SIGTERM.
  const fifo = join(dir, 'decisions.fifo');
  execFileSync('mkfifo', [fifo]);
  t.throws(asDir(fifo), /telemetry\.decisionLog\.output: cannot open the decision log: .*decisions\.fifo is not a regular file \(a named pipe or socket\)/);
  t.doesNotThrow(asDir('/dev/null'), 'a character device such as /dev/null is fine');
  // A relative file in the rules file's own folder is fine, and checking it creates nothing.
  const rel = writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { decisionLog: { output: 'decisions.log' } }; }), dir);
  loadRules(rel);
  t.notOk(existsSync(join(dir, 'decisions.log')), 'loading the rules does not create the log');
});

t.test('a decision log named like a file the rules read (the rules file, the journal, a key set) is a rules problem', async (t) => {
  // Before: valid; any anonymous request then appended a decision line to it, and the next
  // start was refused (the rules file no longer parsed, the journal was not a journal).
  const dir = mkdtempSync(join(tmpdir(), 'dg-'));
  const withLog = (output: string, revocation?: Record<string, unknown>) => () => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => {
    r.telemetry = { decisionLog: { output } };
    if (revocation) r.revocation = revocation;
  }), dir));
  t.throws(withLog('rules.yaml'), /telemetry\.decisionLog\.output: .*rules\.yaml is a file the rules read \(the rules file\)/);
  t.throws(withLog(join(dir, 'rules.yaml')), /the rules file/, 'by its absolute path too');
  t.throws(withLog('shared.log', { journal: 'shared.log' }), /telemetry\.decisionLog\.output: .*shared\.log is a file the rules read \(named elsewhere in the rules\)/);
  t.doesNotThrow(withLog('decisions.log', { journal: 'journal.log' }), 'files of their own');
});

/**
 * A folder the test's own user may not write: its mode for a user, a read-only mount for root
 * (which a mode does not stop, and EROFS does); undefined where root cannot mount.
 */
function unwritableFolder(): string | undefined {
  const ro = mkdtempSync(join(tmpdir(), 'dg-ro-'));
  if (process.getuid?.() !== 0) { chmodSync(ro, 0o500); return ro; }
  try { execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=16k', 'tmpfs', ro], { stdio: 'ignore' }); } catch { return undefined; }
  t.teardown(() => { execFileSync('umount', [ro]); });
  return ro;
}

const ro = unwritableFolder();
t.test('a decision log in a folder driftguard may not write is a rules problem', { skip: ro ? false : 'root here cannot mount a read-only tmpfs, and a folder mode does not stop root' }, async (t) => {
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', (r) => { r.telemetry = { decisionLog: { output: join(ro!, 'decisions.log') } }; }))), /cannot open the decision log: .* is not writable/);
});

t.test('a reload that changes the telemetry section says its settings wait for a restart', async (t) => {
  const { upstream, jwksServer } = await import('../support/servers.ts');
  const { testKey, jwks } = await import('../support/keys.ts');
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = (rate: number) => baseRules(up.origin, keys.url, (r) => { r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none', allowSampleRate: rate } }; });
  const first = rules(1);
  const dg = await startWithTelemetry(first);
  t.teardown(async () => { await dg.stop(); await up.close(); await keys.close(); });
  const said = () => dg.logs.filter((l: string) => l.includes('telemetry settings changed by the reload take effect at the next restart')).length;
  // The same telemetry section as at start (as startWithTelemetry completed it), another proxy setting.
  const same = structuredClone(first);
  same.proxy.timeouts = { connect: '3s' };
  await dg.dg.swap(loadRules(writeRules(same, mkdtempSync(join(tmpdir(), 'dg-telemetry-reload-')))));
  t.equal(said(), 0, 'a reload that leaves telemetry alone says nothing of it');
  const changed = structuredClone(first);
  changed.telemetry.decisionLog.allowSampleRate = 0;
  await dg.dg.swap(loadRules(writeRules(changed, mkdtempSync(join(tmpdir(), 'dg-telemetry-reload-')))));
  t.equal(said(), 1, 'a changed sample rate is reported as not in force');
});
