// The pod network's IP family (chart value and injector config `ipFamily`): IPv4 listens on
// 0.0.0.0; IPv6 on [::], which on a dual-stack node takes IPv4 too. The addresses the injector
// gives a sidecar are used as they are by a real driftguard subprocess and a real injector,
// reached over ::1 and 127.0.0.1. A machine without IPv6 (a CI container with it turned off)
// skips those two tests, saying so.

import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { buildConfig } from '../../proxy/inject/config.ts';
import { sidecarContainer } from '../../proxy/inject/sidecar.ts';
import { startInjectorServer } from '../../proxy/inject/server.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { upstream } from '../support/servers.ts';
import { runDriftguard } from '../support/subprocess.ts';
import { selfSignedCertificate } from '../support/tls.ts';
import { httpsRequest } from './support.ts';

const IMAGE = 'ghcr.io/driftguard/driftguard:0.1.0';

/** Whether this machine can listen on [::] and reach it over ::1. */
const ipv6 = await new Promise<boolean>((resolve) => {
  const s = createServer();
  s.once('error', () => resolve(false));
  s.listen(0, '::1', () => { s.close(() => resolve(true)); });
});
const needsIpv6 = ipv6 ? false : 'no IPv6 on this machine (::1 cannot be listened on)';
const settings = { rulesConfigMap: 'driftguard-rules', listenPort: 15080, upstreamPort: 8080, grace: '20s' };
const envOf = (c: Record<string, unknown>) => Object.fromEntries((c.env as { name: string; value?: string }[]).map((e) => [e.name, e.value]));

/** GET http://host:port/path on a connection of its own: the status, or the error's code. */
function status(host: string, port: number, path: string): Promise<number | string> {
  return new Promise((resolve) => {
    request({ host, port, path, agent: false }, (res) => { res.resume(); resolve(res.statusCode!); })
      .on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message)).end();
  });
}

t.test('IPv4 (the default): the sidecar listens on 0.0.0.0', async (t) => {
  const env = envOf(sidecarContainer(buildConfig({ image: IMAGE }), settings));
  t.equal(env.DRIFTGUARD_LISTEN, '0.0.0.0:15080');
  t.equal(env.DRIFTGUARD_PROBES, '0.0.0.0:15021');
  t.equal(env.DRIFTGUARD_UPSTREAM, 'http://127.0.0.1:8080');
});

t.test('IPv6: the sidecar listens on [::]', async (t) => {
  const env = envOf(sidecarContainer(buildConfig({ image: IMAGE, ipFamily: 'IPv6' }), settings));
  t.equal(env.DRIFTGUARD_LISTEN, '[::]:15080');
  t.equal(env.DRIFTGUARD_PROBES, '[::]:15021');
  t.equal(env.DRIFTGUARD_UPSTREAM, 'http://127.0.0.1:8080', 'the app is reached on loopback either way');
});

t.test('IPv6: a real driftguard started with those addresses answers over IPv6 and IPv4', { skip: needsIpv6 }, async (t) => {
  const env = envOf(sidecarContainer(buildConfig({ image: IMAGE, ipFamily: 'IPv6' }), settings));

  const up = await upstream();
  t.teardown(() => up.close());
  const file = writeRules(baseRules(up.origin, 'http://127.0.0.1:9/unused', (r) => {
    r.identity.issuers[0].jwks = { url: 'http://127.0.0.1:9/unused', timeout: '200ms' };
  }));
  // The injector's addresses, with ports the test can have.
  const anyPort = (address: string) => address.replace(/:\d+$/, ':0');
  const dg = await runDriftguard(file, [], { DRIFTGUARD_LISTEN: anyPort(env.DRIFTGUARD_LISTEN!), DRIFTGUARD_PROBES: anyPort(env.DRIFTGUARD_PROBES!), OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const listening = await dg.waitFor((l) => l.msg === 'driftguard listening');
  const port = Number(/:(\d+)$/.exec(listening.listen)![1]);
  const probes = Number(/:(\d+)$/.exec(listening.probes)![1]);
  t.match(listening.listen, /^\[::\]:\d+$/);
  t.equal(await status('::1', port, '/status'), 200, 'traffic over IPv6');
  t.equal(await status('127.0.0.1', port, '/status'), 200, 'and over IPv4');
  t.equal(await status('::1', probes, '/healthz'), 200, 'the kubelet\'s probe over IPv6');
  t.equal(up.seen.length, 2);
});

t.test('IPv6: the injector listens on [::] as the chart starts it, and answers over IPv6', { skip: needsIpv6 }, async (t) => {
  const tls = selfSignedCertificate();
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-inject-'));
  writeFileSync(join(dir, 'tls.crt'), tls.cert);
  writeFileSync(join(dir, 'tls.key'), tls.key);
  const injector = await startInjectorServer({
    config: buildConfig({ image: IMAGE, ipFamily: 'IPv6' }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'),
    host: '::', port: 0, certCheckIntervalMs: 0, log: () => {},
  });
  t.teardown(() => injector.close());
  t.equal(injector.address.address, '::');
  const res = await httpsRequest(injector.address.port, tls.cert, { method: 'GET', path: '/healthz', host: '::1' });
  t.equal(res.status, 200);
});
