// `driftguard inject`: serves the mutating admission webhook over TLS.
// main() takes the arguments after the subcommand and resolves with the exit code
// once the server has stopped (SIGTERM or SIGINT: stop accepting, finish in-flight
// reviews, exit 0). Usage errors exit 2, invalid configuration and a failed start 1 (as the
// main CLI's), with a message, before listening.

import { parseArgs } from 'node:util';
import { buildConfig, readConfigFileWithLines, InjectorConfigError, type LineOf } from './config.ts';
import { startInjectorServer } from './server.ts';
import { parseAddress } from '../lib/address.ts';
import { MAX_TIMER_MS, TIMER_TOO_LONG, parseDuration } from '../rules/durations.ts';

export const USAGE = `Usage: driftguard inject --tls-cert FILE --tls-key FILE [options]

Serves the driftguard mutating admission webhook (POST /mutate) over HTTPS. Pods that
opt in (label driftguard.io/inject: "true" on the pod or its namespace; "false" on the
pod opts out) get the driftguard sidecar with the rules ConfigMap mounted.

Options:
  --tls-cert FILE          PEM certificate (chain) of the webhook (required)
  --tls-key FILE           PEM private key of the webhook (required)
  --listen ADDR            host:port to listen on (default 0.0.0.0:9443)
  --config FILE            injector configuration, YAML (keys below)
  --image IMAGE            sidecar image (config: image; required from file or flag)
  --native-sidecar BOOL    true: native sidecar (Kubernetes >= 1.29), false: regular
                           container (config: nativeSidecar, default false)
  --drain DURATION         after SIGTERM, keep serving this long before closing
                           (default 5s; 0s closes at once), while the API server
                           still sends reviews to this replica; a second signal
                           closes at once
  --rules-configmap NAME   default rules ConfigMap (config: rulesConfigMap,
                           default driftguard-rules)
  -h, --help               show this help

Configuration file keys (defaults): image, imagePullPolicy (IfNotPresent),
nativeSidecar (false), rulesConfigMap (driftguard-rules), rulesFile (rules.yaml),
listenPort (15080), upstreamPort (8080), adminPort (15021, probes), adminLocalPort (15000, loopback admin), runAsUser (65532),
nodeOptions (--max-old-space-size=112 --max-semi-space-size=4), resources.requests (cpu 50m, memory 128Mi),
resources.limits (memory 320Mi), tmpSizeLimit (16Mi), serviceAccountToken (true),
ipFamily (IPv4; IPv6: the sidecar listens on [::]), grace (20s; less in a pod whose
terminationGracePeriodSeconds leaves less), drainDelay (5s, a regular container's: requests
still taken after SIGTERM, before the drain), env (more environment of the sidecar: OTEL_*).
Flags override the file.

Pod annotations: driftguard.io/rules (ConfigMap name), driftguard.io/listen-port,
driftguard.io/upstream-port.
`;

export async function main(argv: string[]): Promise<number> {
  const err = (msg: string, code = 2) => { process.stderr.write(`driftguard inject: ${msg}\n`); return code; };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'listen': { type: 'string', default: '0.0.0.0:9443' },
        'config': { type: 'string' },
        'image': { type: 'string' },
        'native-sidecar': { type: 'string' },
        'rules-configmap': { type: 'string' },
        'drain': { type: 'string', default: '5s' },
        'help': { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    return err(`${(e as Error).message}\n\n${USAGE}`);
  }
  if (values.help) { process.stdout.write(USAGE); return 0; }
  const certFile = values['tls-cert'] as string | undefined;
  const keyFile = values['tls-key'] as string | undefined;
  if (!certFile || !keyFile) return err('--tls-cert and --tls-key are required (see --help)');
  const listen = parseAddress(values.listen as string);
  if (!listen) return err(`--listen ${JSON.stringify(values.listen)} is not host:port`);
  let drainMs: number;
  try { drainMs = parseDuration(values.drain as string); } catch (e) { return err(`--drain: ${(e as Error).message}`); }
  if (drainMs > MAX_TIMER_MS) return err(`--drain ${values.drain as string}: ${TIMER_TOO_LONG}`);

  // Neither flag nor file gives the image: a usage error, as a missing --tls-cert is (a file
  // without one is invalid configuration, named below).
  if (values.image === undefined && values.config === undefined) return err('--image IMAGE is required, or image: in --config FILE (see --help)');

  let config;
  try {
    const file = values.config ? readConfigFileWithLines(values.config as string) : undefined;
    const input: Record<string, unknown> = file?.value ?? {};
    // A value given by a flag has no line in the file.
    const flagged = new Set<string>();
    if (values.image !== undefined) { input.image = values.image; flagged.add('image'); }
    if (values['rules-configmap'] !== undefined) { input.rulesConfigMap = values['rules-configmap']; flagged.add('rulesConfigMap'); }
    const native = values['native-sidecar'];
    if (native !== undefined) {
      if (native !== 'true' && native !== 'false') return err(`--native-sidecar must be true or false, got ${JSON.stringify(native)}`);
      input.nativeSidecar = native === 'true';
      flagged.add('nativeSidecar');
    }
    const lineOf: LineOf = (key) => (flagged.has(key) ? undefined : file?.lineOf(key));
    config = buildConfig(input, (values.config as string | undefined) ?? 'flags', lineOf);
  } catch (e) {
    if (e instanceof InjectorConfigError) return err(e.message, 1);
    throw e;
  }

  let injector;
  try {
    injector = await startInjectorServer({ config, tlsCertFile: certFile, tlsKeyFile: keyFile, host: listen.host, port: listen.port });
  } catch (e) {
    return err(`cannot start: ${(e as Error).message}`, 1);
  }
  const { address, port } = injector.address;
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: 'injector listening', address, port, nativeSidecar: config.nativeSidecar, image: config.image })}\n`);

  await new Promise<void>((resolve) => {
    const log = (msg: string, fields: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'info', msg, ...fields })}\n`);
    let draining: NodeJS.Timeout | undefined;
    const close = (signal: NodeJS.Signals) => {
      clearTimeout(draining);
      process.off('SIGTERM', stop); process.off('SIGINT', stop);
      log('injector stopping', { signal });
      injector.close().then(resolve, resolve);
    };
    // With failurePolicy Fail, a pod created while the API server still routes reviews to
    // this terminating replica would be refused: keep answering until the endpoints have
    // moved on, then stop. A second signal (or Ctrl-C) does not wait.
    const stop = (signal: NodeJS.Signals) => {
      if (draining !== undefined || signal === 'SIGINT' || drainMs === 0) { close(signal); return; }
      log('injector draining', { signal, drainMs });
      injector.drain();
      draining = setTimeout(() => close(signal), drainMs);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // As the sidecar's (run.ts): SIGUSR1 would open the inspector, SIGUSR2 end it undrained.
    for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) process.on(signal, () => log('signal ignored', { signal }));
  });
  return 0;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
