// The injector driven the way the API server drives it: AdmissionReview JSON POSTed
// over HTTPS on loopback; the returned JSONPatch applied to the pod; the result
// validated against the Kubernetes schemas plus explicit assertions on each field
// that matters (the schemas accept misspelled fields).

import t, { type Test as Tap } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCertificate } from '../support/tls.ts';
import { validateObject } from '../support/k8s.ts';
import { startInjectorServer, type InjectorServer, type LogRecord, MAX_BODY_BYTES } from '../../proxy/inject/server.ts';
import { buildConfig } from '../../proxy/inject/config.ts';
import { httpsRequest, appPod, admissionReview, decodePatch, patched, type Pod } from './support.ts';

const tls = selfSignedCertificate();
const dir = mkdtempSync(join(tmpdir(), 'driftguard-inject-'));
writeFileSync(join(dir, 'tls.crt'), tls.cert);
writeFileSync(join(dir, 'tls.key'), tls.key);

const IMAGE = 'ghcr.io/driftguard/driftguard:0.1.0';

async function start(nativeSidecar: boolean, logs: LogRecord[] = []): Promise<InjectorServer> {
  const injector = await startInjectorServer({
    config: buildConfig({ image: IMAGE, nativeSidecar }),
    tlsCertFile: join(dir, 'tls.crt'),
    tlsKeyFile: join(dir, 'tls.key'),
    host: '127.0.0.1',
    port: 0,
    certCheckIntervalMs: 0,
    log: (r) => logs.push(r),
  });
  t.teardown(() => injector.close());
  return injector;
}

const native = await start(true);
const regular = await start(false);

interface Review { apiVersion: string; kind: string; response: { uid: string; allowed: boolean; patch?: string; patchType?: string; status?: { code: number; message: string }; warnings?: string[] } }

async function review(t: Tap, server: InjectorServer, pod: unknown, request: Record<string, unknown> = {}): Promise<{ sent: ReturnType<typeof admissionReview>; got: Review }> {
  const sent = admissionReview(pod, request);
  const res = await httpsRequest(server.address.port, tls.cert, { body: JSON.stringify(sent) });
  t.equal(res.status, 200, 'an AdmissionReview is answered with 200');
  t.match(res.headers['content-type'], /^application\/json/);
  const got = JSON.parse(res.text) as Review;
  t.equal(got.apiVersion, 'admission.k8s.io/v1');
  t.equal(got.kind, 'AdmissionReview');
  t.equal(got.response.uid, (sent.request as { uid: string }).uid, 'response.uid echoes request.uid');
  return { sent, got };
}

function sidecarOf(pod: Pod): Record<string, any> {
  const all = [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
  const found = all.filter((c: { name: string }) => c.name === 'driftguard');
  if (found.length !== 1) throw new Error(`expected one driftguard container, found ${found.length}`);
  return found[0];
}

function envOf(container: Record<string, any>): Record<string, string> {
  return Object.fromEntries((container.env as { name: string; value?: string }[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value as string]));
}

function assertHardenedSidecar(tt: Tap, pod: Pod, expect: { listen: number; upstream: number; rules: string }): void {
  const c = sidecarOf(pod);
  tt.equal(c.image, IMAGE);
  tt.same(c.command, ['node', '/app/proxy/cli.js', 'run', '--config', '/etc/driftguard/rules/rules.yaml']);
  const env = envOf(c);
  tt.equal(env.DRIFTGUARD_LISTEN, `0.0.0.0:${expect.listen}`);
  tt.equal(env.DRIFTGUARD_UPSTREAM, `http://127.0.0.1:${expect.upstream}`);
  // The full admin listener stays on loopback; the kubelet and Prometheus get the probe listener.
  tt.equal(env.DRIFTGUARD_ADMIN, '127.0.0.1:15000');
  tt.equal(env.DRIFTGUARD_PROBES, '0.0.0.0:15021');
  tt.match(env.NODE_OPTIONS, /--max-old-space-size=\d+/);
  tt.same(c.ports.map((p: { containerPort: number }) => p.containerPort).sort(), [expect.listen, 15021].sort());
  tt.same(c.startupProbe.httpGet, { path: '/readyz', port: 15021, scheme: 'HTTP' });
  tt.same(c.readinessProbe.httpGet, { path: '/readyz', port: 15021, scheme: 'HTTP' });
  tt.same(c.livenessProbe.httpGet, { path: '/healthz', port: 15021, scheme: 'HTTP' });
  tt.equal(c.resources.limits.memory, '320Mi');
  tt.ok(c.resources.requests.cpu && c.resources.requests.memory, 'cpu and memory requests');
  tt.equal(c.securityContext.runAsNonRoot, true);
  tt.equal(c.securityContext.readOnlyRootFilesystem, true);
  tt.equal(c.securityContext.allowPrivilegeEscalation, false);
  tt.same(c.securityContext.capabilities, { drop: ['ALL'] });
  tt.ok(c.securityContext.runAsUser > 0, 'a non-zero UID');
  const rulesMount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/etc/driftguard/rules');
  tt.ok(rulesMount, 'rules mounted at /etc/driftguard/rules');
  tt.equal(rulesMount.subPath, undefined, 'a directory mount, never subPath (updates must arrive)');
  tt.equal(rulesMount.readOnly, true);
  tt.ok(c.volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/tmp'), 'a writable /tmp');
  const rulesVolume = pod.spec.volumes.find((v: { name: string }) => v.name === rulesMount.name);
  tt.equal(rulesVolume.configMap.name, expect.rules);
  const tmpVolume = pod.spec.volumes.find((v: { name: string }) => v.name === c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/tmp').name);
  tt.ok(tmpVolume.emptyDir, '/tmp is an emptyDir');
  // The cluster issuer (profile: kubernetes) reads the pod's token and CA from the standard path.
  const saMount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/var/run/secrets/kubernetes.io/serviceaccount');
  tt.ok(saMount, 'service-account token mounted at the standard path');
  tt.equal(saMount.readOnly, true);
  const saVolume = pod.spec.volumes.find((v: { name: string }) => v.name === saMount.name);
  const sources = saVolume.projected.sources;
  tt.equal(sources.find((x: any) => x.serviceAccountToken)?.serviceAccountToken.path, 'token', 'a kubelet-rotated projected token');
  tt.equal(sources.find((x: any) => x.configMap)?.configMap.name, 'kube-root-ca.crt', 'the cluster CA');
}

t.test('native sidecar: an opted-in pod gets driftguard as the first init container', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { initContainers: [{ name: 'migrate', image: 'registry.example.com/orders-migrate:1.4.2' }] } });
  const { got } = await review(t, native, pod);
  t.equal(got.response.allowed, true);
  t.equal(got.response.patchType, 'JSONPatch');
  const out = patched(pod, got.response);
  validateObject(out);
  t.equal(out.spec.initContainers.length, 2);
  t.equal(out.spec.initContainers[0].name, 'driftguard', 'first, so later init containers and the app wait for it');
  t.equal(out.spec.initContainers[0].restartPolicy, 'Always', 'native sidecar');
  t.equal(out.spec.initContainers[1].name, 'migrate');
  t.same(out.spec.containers, pod.spec.containers, 'app containers untouched');
  t.equal(out.metadata.annotations?.['driftguard.io/status'], 'injected-native');
  assertHardenedSidecar(t, out, { listen: 15080, upstream: 8080, rules: 'driftguard-rules' });
});

t.test('native sidecar: a pod without initContainers, volumes or annotations', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  t.equal(pod.spec.initContainers, undefined);
  t.equal(pod.spec.volumes, undefined);
  const { got } = await review(t, native, pod);
  const out = patched(pod, got.response);
  validateObject(out);
  t.equal(out.spec.initContainers.length, 1);
  t.equal(out.spec.volumes.length, 3);
  assertHardenedSidecar(t, out, { listen: 15080, upstream: 8080, rules: 'driftguard-rules' });
});

t.test('regular container on clusters without native sidecars', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { volumes: [{ name: 'cache', emptyDir: {} }] } });
  const { got } = await review(t, regular, pod);
  t.equal(got.response.allowed, true);
  const out = patched(pod, got.response);
  validateObject(out);
  t.equal(out.spec.initContainers, undefined, 'no init container');
  t.same(out.spec.containers.map((c: { name: string }) => c.name), ['app', 'driftguard'], 'appended after the app');
  t.equal(out.spec.containers[1].restartPolicy, undefined, 'no restartPolicy on a regular container');
  t.same(out.spec.volumes.map((v: { name: string }) => v.name), ['cache', 'driftguard-rules', 'driftguard-tmp', 'driftguard-identity'], 'existing volumes kept');
  t.equal(out.metadata.annotations?.['kubectl.kubernetes.io/default-container'], 'app', 'kubectl logs/exec keep landing in the app');
  t.equal(out.metadata.annotations?.['driftguard.io/status'], 'injected');
  assertHardenedSidecar(t, out, { listen: 15080, upstream: 8080, rules: 'driftguard-rules' });
});

t.test('a pod that turns its service-account token off gets none in the sidecar either', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { automountServiceAccountToken: false } });
  const { got } = await review(t, native, pod);
  t.equal(got.response.allowed, true);
  const out = patched(pod, got.response);
  validateObject(out);
  t.notOk(out.spec.volumes.some((v: { name: string }) => v.name === 'driftguard-identity'), 'no projected token volume');
  t.notOk(sidecarOf(out).volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/var/run/secrets/kubernetes.io/serviceaccount'), 'nothing mounted where the token would be');
  t.match(got.response.warnings?.join('\n'), /automountServiceAccountToken: false/, 'and the pod\'s owner is told what that means');
  const on = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { automountServiceAccountToken: true } });
  t.ok(patched(on, (await review(t, native, on)).got.response).spec.volumes.some((v: { name: string }) => v.name === 'driftguard-identity'), 'true (or unset) keeps it');
});

t.test('an app\'s UDP port of the sidecar\'s number is no conflict; a TCP one is', async (t) => {
  const udp = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }, { containerPort: 15080, protocol: 'UDP' }, { containerPort: 15021, protocol: 'SCTP' }] }] } });
  const { got } = await review(t, native, udp);
  t.equal(got.response.allowed, true, 'UDP 15080 and SCTP 15021 beside the sidecar\'s TCP listeners');
  const tcp = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }, { containerPort: 15080, protocol: 'TCP' }] }] } });
  const refused = (await review(t, native, tcp)).got;
  t.equal(refused.response.allowed, false);
  t.match(refused.response.status?.message, /listen port 15080 is already used by container "app"/);
});

t.test('a Job pod on a cluster without native sidecars is injected with a warning', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { restartPolicy: 'Never' } });
  const { got } = await review(t, regular, pod);
  t.equal(got.response.allowed, true);
  t.match(got.response.warnings?.join('\n'), /Job/);
});

t.test('annotations choose the rules ConfigMap and the ports', async (t) => {
  const pod = appPod({
    labels: { 'driftguard.io/inject': 'true' },
    annotations: { 'driftguard.io/rules': 'orders-rules', 'driftguard.io/listen-port': '9000', 'driftguard.io/upstream-port': '3000', 'example.com/owner': 'team-a' },
    spec: { containers: [{ name: 'app', image: 'registry.example.com/orders-api:1.4.2', ports: [{ containerPort: 3000 }] }] },
  });
  const { got } = await review(t, native, pod);
  const out = patched(pod, got.response);
  validateObject(out);
  t.equal(out.metadata.annotations?.['example.com/owner'], 'team-a', 'existing annotations kept');
  t.ok(decodePatch(got.response).some((op) => op.path === '/metadata/annotations/driftguard.io~1status'), 'keys with / are escaped as ~1 in the pointer');
  assertHardenedSidecar(t, out, { listen: 9000, upstream: 3000, rules: 'orders-rules' });
  t.equal(got.response.warnings, undefined, 'no warning when the app declares the upstream port');
});

t.test('a pod in an opted-in namespace without its own label is injected', async (t) => {
  // The namespace case is selected by the webhook's namespaceSelector; the pod has no label.
  const pod = appPod();
  const { got } = await review(t, native, pod);
  t.equal(got.response.allowed, true);
  const out = patched(pod, got.response);
  t.equal(sidecarOf(out).name, 'driftguard');
});

t.test('opt-out: driftguard.io/inject: "false" on the pod wins', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'false' } });
  for (const server of [native, regular]) {
    const { got } = await review(t, server, pod);
    t.equal(got.response.allowed, true, 'the pod is admitted');
    t.equal(got.response.patch, undefined, 'without a patch');
    t.equal(got.response.patchType, undefined);
  }
});

t.test('idempotent: an injected pod is left alone on reinvocation', async (t) => {
  for (const server of [native, regular]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
    const first = patched(pod, (await review(t, server, pod)).got.response);
    const { got } = await review(t, server, first);
    t.equal(got.response.allowed, true);
    t.equal(got.response.patch, undefined, 'no second patch');
    // A pod template copied from a running pod carries the container but maybe not the annotation.
    const copied = structuredClone(first);
    delete copied.metadata.annotations?.['driftguard.io/status'];
    const again = await review(t, server, copied);
    t.equal(again.got.response.patch, undefined, 'a pod that already has the container is left alone');
  }
});

t.test('reinvoked after a later webhook added a clashing container (Istio\'s sorts after driftguard\'s), an injected pod is refused', async (t) => {
  for (const server of [native, regular]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
    const injected = patched(pod, (await review(t, server, pod)).got.response);
    // What Istio's injector adds: a proxy declaring 15090, probed on 15021 (driftguard's probe port).
    const istio = { name: 'istio-proxy', image: 'istio/proxyv2:1.24.0', ports: [{ containerPort: 15090 }], readinessProbe: { httpGet: { path: '/healthz/ready', port: 15021 } } };
    const withIstio = structuredClone(injected);
    withIstio.spec.containers.push(istio);
    const { got } = await review(t, server, withIstio);
    t.equal(got.response.allowed, false, 'refused on reinvocation');
    t.match(got.response.status?.message, /probe port 15021 is already used by container "istio-proxy"/);
    // And a container added later with a port of the sidecar's name.
    const named = structuredClone(injected);
    named.spec.containers.push({ name: 'extra', image: 'x', ports: [{ name: 'driftguard', containerPort: 9999 }] });
    t.match((await review(t, server, named)).got.response.status?.message, /container "extra" declares a port named driftguard/);
    // The sidecar's own ports are no clash with itself.
    const again = await review(t, server, injected);
    t.equal(again.got.response.allowed, true);
    t.equal(again.got.response.patch, undefined);
  }
});

t.test('only the injector\'s own sidecar counts as injected: a look-alike is refused, a pod-written status ignored', async (t) => {
  for (const server of [native, regular]) {
    // The pod writes the status annotation itself: it was skipped, ran unguarded and looked injected.
    const spoofed = appPod({ labels: { 'driftguard.io/inject': 'true' }, annotations: { 'driftguard.io/status': 'injected' } });
    const injected = patched(spoofed, (await review(t, server, spoofed)).got.response);
    t.doesNotThrow(() => sidecarOf(injected), 'a pod-written status does not stop injection');
    t.match(injected.metadata.annotations?.['driftguard.io/status'], /^injected/);
    // A container of the sidecar's name that is not the sidecar.
    const lookalike = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'app:1', ports: [{ containerPort: 8080 }] }, { name: 'driftguard', image: 'busybox', command: ['sleep', 'inf'] }] } });
    const { got } = await review(t, server, lookalike);
    t.equal(got.response.allowed, false, 'refused');
    t.match(got.response.status?.message, /already has a container named driftguard that is not the injector's/);
  }
});

t.test('a sidecar whose image a later webhook moved to a mirror the operator names is still the injector\'s; any other registry\'s is a pod\'s own', async (t) => {
  const mirrored = await startInjectorServer({ config: buildConfig({ image: IMAGE, imageMirrors: ['mirror.corp', 'cache.corp:5000'] }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {} });
  t.teardown(() => mirrored.close());
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const injected = patched(pod, (await review(t, mirrored, pod)).got.response);
  const withImage = (image: string) => { const moved = structuredClone(injected); sidecarOf(moved).image = image; return moved; };
  for (const image of ['mirror.corp/ghcr.io/driftguard/driftguard:0.1.0', 'cache.corp:5000/driftguard/driftguard:0.1.0']) {
    const { got } = await review(t, mirrored, withImage(image));
    t.equal(got.response.allowed, true, `${image}: allowed`);
    t.equal(got.response.patch, undefined, `${image}: taken for the injector's own sidecar (it was refused as a foreign container)`);
  }
  // A pod that copies the sidecar with an image of its own choosing is not taken for injected:
  // its image would run as the guard. Not from a registry nobody named, nor from a named one's other path.
  for (const image of ['registry.attacker.example/ghcr.io/driftguard/driftguard:0.1.0', 'registry.attacker.example/driftguard/driftguard:0.1.0', 'localhost:5000/driftguard/driftguard:0.1.0', 'docker.io/driftguard/driftguard:0.1.0', 'driftguard/driftguard:0.1.0', 'mirror.corp/other/driftguard:0.1.0']) {
    t.equal((await review(t, mirrored, withImage(image))).got.response.allowed, false, `${image}: refused`);
  }
  // Without mirrors named, the configured repository only.
  t.equal((await review(t, regular, withImage('mirror.corp/ghcr.io/driftguard/driftguard:0.1.0'))).got.response.allowed, false, 'no mirror named: refused');
});

t.test('a container with the injector\'s image and command but other rules, ports or listeners is refused, not taken for the sidecar', async (t) => {
  for (const server of [native, regular]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
    const injected = patched(pod, (await review(t, server, pod)).got.response);
    const tamper: [string, (c: Record<string, any>) => void][] = [
      ['rules /dev/null', (c) => { c.command = ['node', '/app/proxy/cli.js', 'run', '--config', '/dev/null']; }],
      // A Service's targetPort: driftguard then reached the app's own port, around the checks.
      ['its port named driftguard on the app\'s port', (c) => { c.ports[0].containerPort = 8080; }],
      ['another upstream', (c) => { c.env.find((e: { name: string }) => e.name === 'DRIFTGUARD_UPSTREAM').value = 'http://127.0.0.1:9'; }],
      ['args after the command', (c) => { c.args = ['--listen', '0.0.0.0:8080']; }],
      // NODE_OPTIONS runs code before driftguard's own: `--import=data:…` rewrote its --config.
      ['NODE_OPTIONS', (c) => { c.env.find((e: { name: string }) => e.name === 'NODE_OPTIONS').value = '--import=data:text/javascript,process.argv[4]="/dev/null"'; }],
      ['envFrom', (c) => { c.envFrom = [{ configMapRef: { name: 'x' } }]; }],
      ['a lifecycle hook', (c) => { c.lifecycle = { postStart: { exec: { command: ['sh', '-c', 'true'] } } }; }],
      ['the rules mounted from elsewhere', (c) => { c.volumeMounts[0].name = 'other'; }],
    ];
    for (const [what, change] of tamper) {
      const fake = structuredClone(injected);
      change(sidecarOf(fake));
      const { got } = await review(t, server, fake);
      t.equal(got.response.allowed, false, `refused: ${what}`);
      t.match(got.response.status?.message, /is not the sidecar the injector adds for it/);
      if (what === 'a lifecycle hook') t.match(got.response.status?.message, /lifecycle hooks: a policy that adds a preStop hook to every container must leave driftguard out/, 'the message names hooks');
    }
  }
});

t.test('a pod that shares its process namespace is injected with a warning: a container of the sidecar\'s user reads its credential and environment', async (t) => {
  for (const [field, spec] of [['shareProcessNamespace', { shareProcessNamespace: true }], ['hostPID', { hostPID: true }]] as const) {
    const { got } = await review(t, regular, appPod({ labels: { 'driftguard.io/inject': 'true' }, spec }));
    t.equal(got.response.allowed, true, `${field}: injected`);
    t.match(got.response.warnings, [new RegExp(`the pod sets ${field}: true, so any container running as the driftguard sidecar's user \\(65532\\) can read its admin credential`)]);
  }
  const plain = await review(t, regular, appPod({ labels: { 'driftguard.io/inject': 'true' } }));
  t.notOk(plain.got.response.warnings?.some((w) => w.includes('process')), 'none for a pod of its own namespaces');
});

/** What the API server does to a pod after each webhook's patch: fieldRef apiVersion defaulted to v1, empty values and false readOnly dropped (omitempty). */
function asApiServerStores(pod: Pod): Pod {
  const p = structuredClone(pod) as any;
  for (const c of [...(p.spec.initContainers ?? []), ...p.spec.containers]) {
    for (const e of c.env ?? []) {
      if (e.valueFrom?.fieldRef && e.valueFrom.fieldRef.apiVersion === undefined) e.valueFrom.fieldRef.apiVersion = 'v1';
      if (typeof e.valueFrom?.resourceFieldRef?.divisor === 'number') e.valueFrom.resourceFieldRef.divisor = String(e.valueFrom.resourceFieldRef.divisor);
      if (e.value === '') delete e.value;
    }
    for (const m of c.volumeMounts ?? []) if (m.readOnly === false) delete m.readOnly;
  }
  return p;
}

t.test('the injector\'s own sidecar as the API server stores it, and with what a later webhook adds to every container, counts as injected', async (t) => {
  // With an empty NODE_OPTIONS and a sidecar.env entry of fieldRef: both come back changed.
  // A divisor of 1 comes back "1" (a quantity), and none as none.
  const server = await startInjectorServer({ config: buildConfig({ image: IMAGE, nativeSidecar: true, nodeOptions: '', env: [{ name: 'OTEL_SERVICE_NAME', value: '' }, { name: 'NODE_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } }, { name: 'MEM', valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: 1 } } }, { name: 'CPU', valueFrom: { resourceFieldRef: { resource: 'limits.cpu' } } }] }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {} });
  t.teardown(() => server.close());
  for (const s of [server, native, regular]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
    const stored = asApiServerStores(patched(pod, (await review(t, s, pod)).got.response));
    // Before: refused as "not the sidecar the injector adds" (a pod labelled in a labelled
    // namespace, reviewed by both webhooks; any reinvocation after a later webhook).
    const again = (await review(t, s, stored)).got.response;
    t.equal(again.allowed, true, 'the second review admits it');
    t.equal(again.patch, undefined, 'and leaves it alone');
    // EKS's pod identity webhook (IRSA) and Vault's agent injector add to every container.
    const irsa = structuredClone(stored) as any;
    for (const c of [...(irsa.spec.initContainers ?? []), ...irsa.spec.containers]) {
      c.env = [...(c.env ?? []), { name: 'AWS_ROLE_ARN', value: 'arn:aws:iam::111122223333:role/orders' }, { name: 'AWS_WEB_IDENTITY_TOKEN_FILE', value: '/var/run/secrets/eks.amazonaws.com/serviceaccount/token' }];
      c.volumeMounts = [...(c.volumeMounts ?? []), { name: 'aws-iam-token', mountPath: '/var/run/secrets/eks.amazonaws.com/serviceaccount', readOnly: true }, { name: 'vault-secrets', mountPath: '/vault/secrets' }];
    }
    const reinvoked = (await review(t, s, irsa)).got.response;
    t.equal(reinvoked.allowed, true, 'asked again after a webhook added its variables and mounts: admitted');
    t.equal(reinvoked.patch, undefined);
    // What a later webhook, or a pod that wrote the sidecar itself, may not add.
    const tamper: [string, (c: Record<string, any>) => void][] = [
      ['LD_PRELOAD', (c) => { c.env.push({ name: 'LD_PRELOAD', value: '/vault/secrets/x.so' }); }],
      // The command's bare `node` is looked up through the container's PATH: a ConfigMap's `node` would run.
      ['PATH', (c) => { c.env.push({ name: 'PATH', value: '/opt/evil:/usr/local/bin:/usr/bin:/bin' }); c.volumeMounts.push({ name: 'evil', mountPath: '/opt/evil' }); }],
      ['NODE_EXTRA_CA_CERTS', (c) => { c.env.push({ name: 'NODE_EXTRA_CA_CERTS', value: '/vault/secrets/ca.pem' }); }],
      ['NODE_TLS_REJECT_UNAUTHORIZED', (c) => { c.env.push({ name: 'NODE_TLS_REJECT_UNAUTHORIZED', value: '0' }); }],
      ['an OTEL_ endpoint', (c) => { c.env.push({ name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://elsewhere:4318' }); }],
      ['HTTPS_PROXY', (c) => { c.env.push({ name: 'https_proxy', value: 'http://elsewhere:3128' }); }],
      // glibc's tunables change its allocator (and were an exploit's way in: CVE-2023-4911).
      ['GLIBC_TUNABLES', (c) => { c.env.push({ name: 'GLIBC_TUNABLES', value: 'glibc.malloc.check=3' }); }],
      // An OpenSSL built with key logging writes every TLS secret there (upstream, key sets, OTLP).
      ['SSLKEYLOGFILE', (c) => { c.env.push({ name: 'SSLKEYLOGFILE', value: '/vault/secrets/keys.log' }); }],
      ['a second DRIFTGUARD_UPSTREAM (the last one wins)', (c) => { c.env.push({ name: 'DRIFTGUARD_UPSTREAM', value: 'http://127.0.0.1:9' }); }],
      ['another DRIFTGUARD_ setting', (c) => { c.env.push({ name: 'DRIFTGUARD_ADMIN', value: '0.0.0.0:15000' }); }],
      ['a mount over its code', (c) => { c.volumeMounts.push({ name: 'x', mountPath: '/app/proxy' }); }],
      ['a mount over Node', (c) => { c.volumeMounts.push({ name: 'x', mountPath: '/usr/local/bin' }); }],
      ['a mount inside its rules', (c) => { c.volumeMounts.push({ name: 'x', mountPath: '/etc/driftguard/rules/rules.yaml', subPath: 'evil.yaml' }); }],
      ['a mount above its rules', (c) => { c.volumeMounts.push({ name: 'x', mountPath: '/etc/' }); }],
      ['a mount at the root', (c) => { c.volumeMounts.push({ name: 'x', mountPath: '//' }); }],
      ['a variable it sets, removed', (c) => { c.env = c.env.filter((e: { name: string }) => e.name !== 'POD_NAME'); }],
    ];
    for (const [what, change] of tamper) {
      const fake = structuredClone(irsa);
      change(sidecarOf(fake));
      const { got } = await review(t, s, fake);
      t.equal(got.response.allowed, false, `refused: ${what}`);
      t.match(got.response.status?.message, /is not the sidecar the injector adds for it/);
    }
  }
});

t.test('a sidecar of another tag of the injector\'s image counts as injected (two reviews of one pod across an upgrade)', async (t) => {
  // A pod that opts in by label in a namespace that opts in is reviewed by both webhooks; mid-
  // upgrade, the second review can reach a replica of another image tag.
  const older = await startInjectorServer({ config: buildConfig({ image: IMAGE.replace(/:[^:/]+$/, ':0.9.0'), nativeSidecar: true }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {} });
  t.teardown(() => older.close());
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const first = patched(pod, (await review(t, older, pod)).got.response);
  t.not(sidecarOf(first).image, IMAGE, 'the first review added the older image\'s sidecar');
  const { got } = await review(t, native, first);
  t.equal(got.response.allowed, true, 'not refused (it was: "not the injector\'s")');
  t.equal(got.response.patch, undefined, 'and left alone');
});

t.test('probes that aim at driftguard\'s listen port, or at another host, take no port', async (t) => {
  // The README suggests probing a public operation through driftguard's port.
  for (const probe of [{ httpGet: { path: '/healthz', port: 15080 } }, { tcpSocket: { port: 15021, host: 'db.internal' } }]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }], readinessProbe: probe }] } });
    const { got } = await review(t, native, pod);
    t.equal(got.response.allowed, true, `${JSON.stringify(probe)}: injected`);
    t.ok(got.response.patch, 'with its patch');
  }
});

t.test('an app probed over the network is warned that a loopback-bound app fails its probes', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }], readinessProbe: { httpGet: { path: '/ready', port: 8080 } } }] } });
  const { got } = await review(t, native, pod);
  t.equal(got.response.allowed, true);
  t.match(got.response.warnings?.join('\n'), /container "app" has an HTTP, TCP or gRPC probe: the kubelet sends it to the pod IP/);
});

t.test('init containers: beside a native sidecar their ports conflict; before a regular one they have exited', async (t) => {
  const pod = () => appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { initContainers: [{ name: 'migrate', image: 'm', ports: [{ containerPort: 15000 }] }] } });
  const regularAnswer = (await review(t, regular, pod())).got;
  t.equal(regularAnswer.response.allowed, true, 'regular: migrate has exited before driftguard starts');
  const nativeAnswer = (await review(t, native, pod())).got;
  t.equal(nativeAnswer.response.allowed, false, 'native: migrate runs while driftguard listens');
  t.match(nativeAnswer.response.status?.message, /local admin port 15000 is already used by container "migrate"/);
  const sidecarInit = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { initContainers: [{ name: 'mesh', image: 'm', restartPolicy: 'Always', ports: [{ containerPort: 15000 }] }] } });
  t.equal((await review(t, regular, sidecarInit)).got.response.allowed, false, 'regular: another native sidecar runs beside it');
});

t.test('Windows pods are not injected, with a warning', async (t) => {
  // By spec.os, or by the node selector alone, as older manifests choose Windows nodes.
  // Or by the label before it, or by a required node affinity that admits Windows nodes only.
  const windowsOnly = (values: string[]) => ({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/os', operator: 'In', values }] }] } } } });
  for (const spec of [{ os: { name: 'windows' } }, { nodeSelector: { 'kubernetes.io/os': 'windows' } }, { nodeSelector: { 'beta.kubernetes.io/os': 'windows' } }, windowsOnly(['windows'])]) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec });
    const { got } = await review(t, native, pod);
    t.equal(got.response.allowed, true);
    t.equal(got.response.patch, undefined, `${JSON.stringify(spec)}: the Linux sidecar would not run there`);
    t.match(got.response.warnings?.[0], /Windows/);
  }
  // An affinity that admits Linux too is no Windows pod: injected.
  const either = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: windowsOnly(['windows', 'linux']) });
  t.ok((await review(t, native, either)).got.response.patch, 'an affinity for Windows or Linux: injected');
});

t.test('hostNetwork pods are not injected, with a warning', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { hostNetwork: true } });
  const { got } = await review(t, native, pod);
  t.equal(got.response.allowed, true);
  t.equal(got.response.patch, undefined);
  t.match(got.response.warnings?.[0], /hostNetwork/);
  // Skipped with its warning even when a port is named like the sidecar's (it was refused).
  const named = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { hostNetwork: true, containers: [{ name: 'app', image: 'x', ports: [{ name: 'driftguard', containerPort: 8080 }] }] } });
  const again = await review(t, native, named);
  t.equal(again.got.response.allowed, true, 'not refused: it is not injected');
  t.match(again.got.response.warnings?.[0], /hostNetwork/);
});

t.test('requests that are not a pod CREATE are admitted unchanged', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const update = await review(t, native, pod, { operation: 'UPDATE', oldObject: pod });
  t.equal(update.got.response.allowed, true);
  t.equal(update.got.response.patch, undefined);
  const deployment = await review(t, native, { apiVersion: 'apps/v1', kind: 'Deployment' }, { kind: { group: 'apps', version: 'v1', kind: 'Deployment' } });
  t.equal(deployment.got.response.allowed, true);
  t.equal(deployment.got.response.patch, undefined);
});

t.test('a Secret of admin credentials named by the pod (or the chart) is mounted in the sidecar alone, read-only, at /etc/driftguard/admin', async (t) => {
  for (const [name, server] of [['native', native], ['regular', regular]] as const) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, annotations: { 'driftguard.io/admin-credential-secret': 'orders-admin' } });
    const { got } = await review(t, server, pod);
    t.equal(got.response.allowed, true, name);
    const out = patched(pod, got.response);
    validateObject(out);
    const c = sidecarOf(out);
    const mount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/etc/driftguard/admin');
    t.match(mount, { name: 'driftguard-admin', readOnly: true }, `${name}: mounted read-only`);
    t.same(out.spec.volumes.find((v: { name: string }) => v.name === mount.name), { name: 'driftguard-admin', secret: { secretName: 'orders-admin', optional: false, defaultMode: 0o444 } }, `${name}: the Secret, required, readable by the sidecar's user`);
    t.notOk(out.spec.containers.some((x: { name: string; volumeMounts?: { name: string }[] }) => x.name !== 'driftguard' && x.volumeMounts?.some((m) => m.name === 'driftguard-admin')), `${name}: no app container mounts it`);
    // Asked again (a later webhook changed the pod): the same sidecar, left alone.
    t.equal((await review(t, server, out)).got.response.patch, undefined, `${name}: an injected pod is left as it is`);
  }
  // Without the annotation, none; from the injector's configuration (the chart's sidecar.adminCredentialSecret), by default.
  const plain = patched(appPod(), (await review(t, regular, appPod())).got.response);
  t.notOk(plain.spec.volumes.some((v: { name: string }) => v.name === 'driftguard-admin'), 'none by default');
  const configured = await startInjectorServer({ config: buildConfig({ image: IMAGE, adminCredentialSecret: 'fleet-admin' }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {} });
  t.teardown(() => configured.close());
  const fromConfig = patched(appPod(), (await review(t, configured, appPod())).got.response);
  t.equal(fromConfig.spec.volumes.find((v: { name: string }) => v.name === 'driftguard-admin')?.secret.secretName, 'fleet-admin', 'the configured Secret');
  const optedOut = appPod({ annotations: { 'driftguard.io/admin-credential-secret': '' } });
  const none = (await review(t, configured, optedOut)).got;
  t.equal(none.response.allowed, true, 'an empty annotation is allowed');
  t.notOk(patched(optedOut, none.response).spec.volumes.some((v: { name: string }) => v.name === 'driftguard-admin'), 'and says none, whatever the default');
  t.throws(() => buildConfig({ image: IMAGE, adminCredentialSecret: 'Not A Name' }), /adminCredentialSecret/, 'a configured name that is no Secret name stops the injector');
});

t.test('an opted-in pod that cannot get a working sidecar is refused with a clear message', async (t) => {
  const cases: [string, Pod | unknown, RegExp][] = [
    ['listen port not a number', appPod({ annotations: { 'driftguard.io/listen-port': 'http' } }), /driftguard\.io\/listen-port.*not a port/],
    ['an admin credential Secret that is no Secret name', appPod({ annotations: { 'driftguard.io/admin-credential-secret': 'Admin_Creds' } }), /annotation driftguard\.io\/admin-credential-secret="Admin_Creds" is not a Secret name/],
    ['a volume of the pod named as the admin credentials\' is', appPod({ annotations: { 'driftguard.io/admin-credential-secret': 'dg-admin' }, spec: { volumes: [{ name: 'driftguard-admin', emptyDir: {} }] } }), /driftguard-admin/],
    ['upstream port out of range', appPod({ annotations: { 'driftguard.io/upstream-port': '70000' } }), /driftguard\.io\/upstream-port.*not a port/],
    ['listen equals upstream', appPod({ annotations: { 'driftguard.io/listen-port': '8080' } }), /forward to itself/],
    ['listen port used by the app', appPod({ annotations: { 'driftguard.io/listen-port': '9090', 'driftguard.io/upstream-port': '8080' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 9090 }, { containerPort: 8080 }] }] } }), /9090 is already used by container "app"/],
    ['probe port used by the app', appPod({ spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 15021 }, { containerPort: 8080 }] }] } }), /probe port 15021 is already used by container "app"; set sidecar\.adminPort/],
    // Istio's proxy declares only 15090 and is probed on 15021: a port only a probe names is in use too.
    ['Istio\'s proxy beside the app', appPod({ spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }] }, { name: 'istio-proxy', image: 'istio/proxyv2:1.24.0', ports: [{ containerPort: 15090 }], readinessProbe: { httpGet: { path: '/healthz/ready', port: 15021 } } }] } }), /probe port 15021 is already used by container "istio-proxy"/],
    // A Service's targetPort: driftguard would resolve to the app's port of that name, around the sidecar.
    ['an app port named driftguard', appPod({ spec: { containers: [{ name: 'app', image: 'x', ports: [{ name: 'driftguard', containerPort: 8080 }] }] } }), /container "app" declares a port named driftguard, the sidecar's/],
    ['an init container\'s port named dg-probes', appPod({ spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 8080 }] }], initContainers: [{ name: 'setup', image: 'x', ports: [{ name: 'dg-probes', containerPort: 9000 }] }] } }), /container "setup" declares a port named dg-probes/],
    ['bad ConfigMap name', appPod({ annotations: { 'driftguard.io/rules': 'Orders_Rules' } }), /driftguard\.io\/rules.*not a ConfigMap name/],
    ['no containers', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' }, spec: { containers: [] } }, /spec\.containers/],
    ['no spec', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' } }, /no spec/],
    ['object is a string', 'a pod', /request\.object/],
    ['labels not an object', { apiVersion: 'v1', kind: 'Pod', metadata: { labels: ['x'] }, spec: { containers: [{ name: 'a', image: 'b' }] } }, /labels/],
  ];
  for (const [name, pod, message] of cases) {
    const { got } = await review(t, native, pod);
    t.equal(got.response.allowed, false, `${name}: refused`);
    t.equal(got.response.status?.code, 400, `${name}: status code`);
    t.match(got.response.status?.message, message, `${name}: message names the cause`);
    t.equal(got.response.patch, undefined, `${name}: no patch`);
  }
});

t.test('malformed input gets a clear error response, never a crash', async (t) => {
  const logs: LogRecord[] = [];
  const server = await start(true, logs);
  const port = server.address.port;
  const post = (body: string | Buffer, headers?: Record<string, string>) => httpsRequest(port, tls.cert, { body, headers });

  const notJson = await post('{"apiVersion": "admission.k8s.io/v1", ');
  t.equal(notJson.status, 400);
  t.match(notJson.text, /not valid JSON/);
  // JSON.parse's message quotes the text around the fault: a pod's environment, its secrets.
  const quoted = await post('{"request": {"object": {"spec": {"containers": [{"env": [{"name": "DB_PASSWORD", "value": hunter2secret}]}]}}}}');
  t.equal(quoted.status, 400);
  t.notMatch(quoted.text, /hunter2/, 'the answer quotes none of the body');
  t.notMatch(JSON.stringify(logs), /hunter2/, 'nor does the log');

  for (const [body, message] of [
    ['[]', /JSON object/],
    ['null', /JSON object/],
    ['{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}', /admission\.k8s\.io\/v1/],
    ['{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', /no request/],
    ['{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":42}}', /uid/],
  ] as const) {
    const res = await post(body);
    t.equal(res.status, 400, `${body}: 400`);
    t.match(res.text, message, `${body}: says why`);
  }

  const wrongType = await post('{}', { 'content-type': 'text/plain' });
  t.equal(wrongType.status, 415);
  const get = await httpsRequest(port, tls.cert, { method: 'GET' });
  t.equal(get.status, 405);
  t.equal(get.headers.allow, 'POST');
  const elsewhere = await httpsRequest(port, tls.cert, { path: '/other', body: '{}' });
  t.equal(elsewhere.status, 404);
  const huge = await post(Buffer.alloc(MAX_BODY_BYTES + 1, 0x20));
  t.equal(huge.status, 413, 'an oversized body is refused');

  // Still serving after all of that.
  const health = await httpsRequest(port, tls.cert, { method: 'GET', path: '/healthz' });
  t.equal(health.status, 200);
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const ok = await httpsRequest(port, tls.cert, { body: JSON.stringify(admissionReview(pod)) });
  t.equal(ok.status, 200);
  t.equal(JSON.parse(ok.text).response.allowed, true);
  t.ok(logs.some((l) => l.msg === 'malformed AdmissionReview'), 'malformed reviews are logged');
  t.ok(logs.some((l) => l.msg === 'admission review' && l.outcome === 'injected' && l.namespace === 'shop'), 'injections are logged with the namespace');
});

t.test('a review\'s warnings are in the injector\'s log line, at warn: for a controller\'s pod they reach nobody else', async (t) => {
  const logs: LogRecord[] = [];
  const injector = await start(false, logs);
  // No container declares 8080, where driftguard would forward: a warning.
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { containers: [{ name: 'app', image: 'x', ports: [{ containerPort: 9000 }] }] } });
  const { got } = await review(t, injector, pod);
  t.ok(got.response.warnings?.length, 'the review carries a warning');
  const line = logs.find((l) => l.msg === 'admission review');
  t.match(line, { level: 'warn', outcome: 'injected', warnings: got.response.warnings }, 'logged with it, at warn');
});

t.test('an idle connection from the API server is kept past Node\'s 5 s: a review sent on it later is answered, not lost to the close', async (t) => {
  const { Agent, request } = await import('node:https');
  // As the API server's transport: one pooled connection, reused after an idle gap.
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: tls.cert });
  t.teardown(() => agent.destroy());
  const sockets = new Set<unknown>();
  const send = () => new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: regular.address.port, method: 'POST', path: '/mutate', agent, headers: { 'content-type': 'application/json' } }, (res) => { sockets.add(res.socket); res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.end(JSON.stringify(admissionReview(appPod({ labels: { 'driftguard.io/inject': 'true' } }))));
  });
  t.equal(await send(), 200);
  await new Promise((r) => setTimeout(r, 6_500));
  t.equal(await send(), 200, 'the second review, on the same connection');
  t.equal(sockets.size, 1, 'one connection: it was still open after 6.5 s idle (Node closes at 5 s)');
});

t.test('a sidecar port below 1024 is injected with a warning: a non-root user binds it only where the runtime allows', async (t) => {
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, annotations: { 'driftguard.io/listen-port': '80' } });
  const { got } = await review(t, regular, pod);
  t.equal(got.response.allowed, true);
  t.match(got.response.warnings, [/the driftguard listen port 80 is below 1024: .*ip_unprivileged_port_start.*EACCES/]);
  const high = await review(t, regular, appPod({ labels: { 'driftguard.io/inject': 'true' } }));
  t.notOk(high.got.response.warnings?.some((w) => w.includes('below 1024')), 'none for the default ports');
});

t.test('a pod with pod-level resources gets the sidecar\'s added to them, with a warning: the API server refused it otherwise', async (t) => {
  // spec.resources (Kubernetes 1.34, beta): it must hold every container's requests, and each container's limits.
  // kubernetes-models knows no spec.resources here, so the result is checked field by field.
  for (const [name, server] of [['native', native], ['regular', regular]] as const) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '256Mi' } } } });
    const { got } = await review(t, server, pod);
    t.equal(got.response.allowed, true);
    const out = patched(pod, got.response) as Pod & { spec: { resources: Record<string, Record<string, string>> } };
    t.same(out.spec.resources, { requests: { cpu: '150m', memory: '256Mi' }, limits: { memory: '576Mi' } }, `${name}: the sidecar's 50m / 128Mi requests and 320Mi limit added; no cpu limit made up`);
    t.match(got.response.warnings, [/pod-level resources: the driftguard sidecar's were added to them \(requests\.cpu 100m -> 150m, requests\.memory 128Mi -> 256Mi, limits\.memory 256Mi -> 576Mi\)/]);
  }
  // A pod-level cpu limit (a Guaranteed pod, or limits alone, whose requests the API server
  // filled from them): the sidecar has no cpu limit, so its request is added to the pod's limit
  // too, or the pod's cpu requests would pass its limit.
  for (const [name, server] of [['native', native], ['regular', regular]] as const) {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { resources: { requests: { cpu: '1', memory: '1Gi' }, limits: { cpu: '1', memory: '1Gi' } } } });
    const { got } = await review(t, server, pod);
    const out = patched(pod, got.response) as Pod & { spec: { resources: Record<string, Record<string, string>> } };
    t.same(out.spec.resources, { requests: { cpu: '1050m', memory: '1152Mi' }, limits: { cpu: '1050m', memory: '1344Mi' } }, `${name}: requests stay within limits`);
  }
  const plain = await review(t, regular, appPod({ labels: { 'driftguard.io/inject': 'true' } }));
  t.notOk(decodePatch(plain.got.response).some((op: { path: string }) => op.path.startsWith('/spec/resources')), 'a pod without them: untouched');
});

t.test('a rotated certificate is picked up without a restart', async (t) => {
  const rotDir = mkdtempSync(join(tmpdir(), 'driftguard-inject-rot-'));
  const first = selfSignedCertificate();
  writeFileSync(join(rotDir, 'tls.crt'), first.cert);
  writeFileSync(join(rotDir, 'tls.key'), first.key);
  const server = await startInjectorServer({
    config: buildConfig({ image: IMAGE }), tlsCertFile: join(rotDir, 'tls.crt'), tlsKeyFile: join(rotDir, 'tls.key'),
    host: '127.0.0.1', port: 0, certCheckIntervalMs: 20, log: () => {},
  });
  t.teardown(() => server.close());
  const before = await httpsRequest(server.address.port, first.cert, { method: 'GET', path: '/healthz' });
  t.equal(before.status, 200);
  const second = selfSignedCertificate();
  writeFileSync(join(rotDir, 'tls.key'), second.key);
  writeFileSync(join(rotDir, 'tls.crt'), second.cert);
  let after;
  for (let i = 0; i < 100; i++) {
    after = await httpsRequest(server.address.port, second.cert, { method: 'GET', path: '/healthz' }).catch(() => undefined);
    if (after) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  t.equal(after?.status, 200, 'the new certificate is served');
  t.not(after?.fingerprint, before.fingerprint);
});

t.test('a body trickled in holds no other review up: it gets 408 at its deadline; bodies past the byte budget get 503', async (t) => {
  const { connect } = await import('node:tls');
  const injector = await startInjectorServer({
    config: buildConfig({ image: IMAGE, nativeSidecar: true }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'),
    host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {}, bodyDeadlineMs: 1_000, maxBodyBytesHeld: 64 * 1024,
  });
  t.teardown(() => injector.close());
  const port = injector.address.port;
  const open = async (head: string): Promise<{ socket: import('node:tls').TLSSocket; answer: Promise<string> }> => {
    const socket = connect({ host: '127.0.0.1', port, ca: tls.cert, servername: 'localhost' });
    socket.on('error', () => {});
    await new Promise((r) => socket.once('secureConnect', r));
    let got = '';
    socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    const answer = new Promise<string>((resolve) => socket.once('close', () => resolve(got)));
    socket.write(head);
    return { socket, answer };
  };
  // Four bodies announced and never finished: they held the four turns, and every review
  // waited behind them for Node's request timeout (15 to 45 s).
  const slow = await Promise.all(Array.from({ length: 4 }, () => open('POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"apiVe')));
  await new Promise((r) => setTimeout(r, 100));
  const body = JSON.stringify(admissionReview(appPod({ labels: { 'driftguard.io/inject': 'true' } })));
  // The order of events, not a clock: the trickled connections close at their deadline, so a
  // review answered while all four are open did not wait behind them.
  let closed = 0;
  for (const { socket } of slow) socket.once('close', () => { closed++; });
  const b = await httpsRequest(port, tls.cert, { body });
  t.equal(b.status, 200, 'a whole review is answered at once');
  t.equal(closed, 0, 'before the trickled bodies\' deadline: none of them has been closed yet');
  t.equal(JSON.parse(b.text).response.allowed, true);
  for (const { answer } of slow) {
    const text = await answer;
    t.match(text, /^HTTP\/1\.1 408 /, 'the trickled body gets 408 at its deadline, and its connection is closed');
    t.match(text, /the body did not arrive within 1000 ms/);
  }
  // 64 KiB held at most: a second body of 40 KiB, while the first is held unfinished, gets 503.
  const big = await open('POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50000\r\n\r\n' + ' '.repeat(40_000));
  await new Promise((r) => setTimeout(r, 100));
  const refused = await httpsRequest(port, tls.cert, { body: ' '.repeat(40_000) });
  t.equal(refused.status, 503, 'past the bytes held at once');
  t.equal(refused.headers['retry-after'], '1');
  big.socket.destroy();
  await big.answer;
  // Its bytes were given back: a review goes through again.
  t.equal((await httpsRequest(port, tls.cert, { body })).status, 200, 'the budget is whole again');
});

t.test('the sidecar\'s grace period fits in the pod\'s terminationGracePeriodSeconds, with a warning when it is cut', async (t) => {
  const graceOf = async (server: InjectorServer, seconds: number | undefined) => {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: seconds === undefined ? {} : { terminationGracePeriodSeconds: seconds } });
    const { got } = await review(t, server, pod);
    return { grace: envOf(sidecarOf(patched(pod, got.response))).DRIFTGUARD_GRACE, warning: got.response.warnings?.find((w) => w.includes('terminationGracePeriodSeconds')) };
  };
  t.same(await graceOf(native, undefined), { grace: '20s', warning: undefined }, 'the default 20s in the default 30 s');
  t.same(await graceOf(native, 25), { grace: '20s', warning: undefined }, '20 s plus the flush and a margin fit in 25');
  const short = await graceOf(native, 10);
  t.equal(short.grace, '5s', 'cut to leave 5 s for the last flush before SIGKILL');
  t.match(short.warning, /terminationGracePeriodSeconds is 10: .* cut from 20s to 5s/);
  t.equal((await graceOf(regular, 3)).grace, '0s', 'a period too short for any drain: none');
  // Stored as written before Kubernetes 1.27, and taken by the kubelet as 1 s (not the default 30).
  const negative = await graceOf(regular, -1);
  t.equal(negative.grace, '0s', 'a negative period is 1 s: no drain');
  t.match(negative.warning, /terminationGracePeriodSeconds is -1/);
  const longer = await startInjectorServer({
    config: buildConfig({ image: IMAGE, nativeSidecar: true, grace: '40s' }),
    tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {},
  });
  t.teardown(() => longer.close());
  t.same(await graceOf(longer, 60), { grace: '40s', warning: undefined }, 'the configured grace where the pod leaves room');
  t.equal((await graceOf(longer, undefined)).grace, '25s', 'cut in a pod of the default 30 s');
  // Below a second: kept as written (it was rounded down to 0s, no grace at all, unsaid).
  const brief = await startInjectorServer({
    config: buildConfig({ image: IMAGE, grace: '1500ms' }),
    tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {},
  });
  t.teardown(() => brief.close());
  t.same(await graceOf(brief, undefined), { grace: '1500ms', warning: undefined }, 'a grace in milliseconds is kept to the millisecond');
  // Reinvoked, the pod already carries the sidecar it was given: still taken for the injector's.
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { terminationGracePeriodSeconds: 10 } });
  const once = patched(pod, (await review(t, native, pod)).got.response);
  t.equal((await review(t, native, once)).got.response.patch, undefined, 'an injected pod with a cut grace is left alone');
  t.throws(() => buildConfig({ image: IMAGE, grace: 'soon' }), /grace: not a duration/);
  t.throws(() => buildConfig({ image: IMAGE, grace: '30d' }), /grace: must be at most 24d/);
  // Within a timer's 24.8 days, past the 24 days the sidecar takes: it would crash-loop.
  t.throws(() => buildConfig({ image: IMAGE, grace: '24.5d' }), /grace: must be at most 24d \(the sidecar refuses a longer grace\)/);
});

t.test('a sidecar injected as a regular container gets a drain delay (it is stopped with the app, while traffic is still routed to it); a native one none', async (t) => {
  const stopOf = async (server: InjectorServer, seconds: number | undefined) => {
    const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: seconds === undefined ? {} : { terminationGracePeriodSeconds: seconds } });
    const { got } = await review(t, server, pod);
    const env = envOf(sidecarOf(patched(pod, got.response)));
    return { delay: env.DRIFTGUARD_DRAIN_DELAY, grace: env.DRIFTGUARD_GRACE, warning: got.response.warnings?.find((w) => w.includes('terminationGracePeriodSeconds')) };
  };
  t.same(await stopOf(regular, undefined), { delay: '5s', grace: '20s', warning: undefined }, 'the default 5s and 20s in the default 30 s');
  t.same(await stopOf(native, undefined), { delay: undefined, grace: '20s', warning: undefined }, 'a native sidecar: no delay');
  const short = await stopOf(regular, 20);
  t.same([short.delay, short.grace], ['5s', '10s'], 'in 20 s: the delay, then what is left for the grace');
  t.match(short.warning, /terminationGracePeriodSeconds is 20: the driftguard sidecar's grace period is cut from 20s to 10s so that/);
  const shorter = await stopOf(regular, 10);
  t.same([shorter.delay, shorter.grace], ['2500ms', '2500ms'], 'in 10 s: both cut, the delay to half of what the flush leaves');
  t.match(shorter.warning, /drain delay is cut from 5s to 2500ms and its grace period is cut from 20s to 2500ms/);
  t.same(await stopOf(regular, 5).then((s) => [s.delay, s.grace]), ['0s', '0s'], 'in 5 s: no room for either');
  const none = await startInjectorServer({
    config: buildConfig({ image: IMAGE, nativeSidecar: false, drainDelay: '0s' }),
    tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {},
  });
  t.teardown(() => none.close());
  t.same(await stopOf(none, undefined), { delay: undefined, grace: '20s', warning: undefined }, 'drainDelay 0s: none');
  // Reinvoked, the pod already carries the sidecar it was given: still taken for the injector's.
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' }, spec: { terminationGracePeriodSeconds: 9 } });
  const once = patched(pod, (await review(t, regular, pod)).got.response);
  t.equal((await review(t, regular, once)).got.response.patch, undefined, 'an injected pod with a cut delay is left alone');
  // The previous release's sidecar had no drain delay, and the whole room of the period for its
  // grace (9 s: 4s): during an upgrade its pods are reviewed again.
  const older = structuredClone(once);
  const sidecar = (older.spec.containers as Record<string, any>[]).find((c) => c.name === 'driftguard')!;
  t.same(sidecar.env.filter((e: { name: string }) => e.name.startsWith('DRIFTGUARD_DRAIN') || e.name === 'DRIFTGUARD_GRACE').map((e: { value: string }) => e.value), ['2s', '2s'], 'now: 2s of grace, 2s of delay in 9 s');
  sidecar.env = sidecar.env.filter((e: { name: string }) => e.name !== 'DRIFTGUARD_DRAIN_DELAY');
  sidecar.env.find((e: { name: string }) => e.name === 'DRIFTGUARD_GRACE').value = '4s';
  const again = (await review(t, regular, older)).got.response;
  t.equal(again.allowed, true, 'a sidecar injected without a drain delay is still the injector\'s own');
  t.equal(again.patch, undefined, 'and is left alone');
  sidecar.env.find((e: { name: string }) => e.name === 'DRIFTGUARD_GRACE').value = '2s';
  t.equal((await review(t, regular, older)).got.response.allowed, false, 'one with another grace and no delay is not');
  sidecar.env.push({ name: 'DRIFTGUARD_DRAIN_DELAY', value: '1h' });
  t.equal((await review(t, regular, older)).got.response.allowed, false, 'nor one with another drain delay');
  // Where both fit, nothing is cut: a long delay beside a short grace stays as configured.
  const longDelay = await startInjectorServer({
    config: buildConfig({ image: IMAGE, nativeSidecar: false, grace: '2s', drainDelay: '15s' }),
    tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {},
  });
  t.teardown(() => longDelay.close());
  t.same(await stopOf(longDelay, undefined), { delay: '15s', grace: '2s', warning: undefined }, '15 s and 2 s fit in the default 30 s: not cut');
  t.same(await stopOf(longDelay, 15).then((s) => [s.delay, s.grace]), ['8s', '2s'], 'in 15 s: the delay gets what the grace leaves, above half');
  t.throws(() => buildConfig({ image: IMAGE, drainDelay: 'soon' }), /drainDelay: not a duration/);
  t.throws(() => buildConfig({ image: IMAGE, grace: '20d', drainDelay: '5d' }), /drainDelay: must be at most 24d with grace \(20d\)/);
  t.throws(() => buildConfig({ image: IMAGE, env: [{ name: 'DRIFTGUARD_DRAIN_DELAY', value: '1s' }] }), /DRIFTGUARD_DRAIN_DELAY is set by the injector itself/);
});

t.test('the exporter\'s headers as a literal are refused, naming the entry and never its value: they would be in every injected pod\'s spec', async (t) => {
  for (const name of ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS']) {
    const err = (() => { try { buildConfig({ image: IMAGE, env: [{ name: 'OTEL_SERVICE_NAME', value: 'orders' }, { name, value: 'api-key=s3cr3t-collector-key' }] }); } catch (e) { return e as Error; } return undefined; })();
    t.match(err?.message, new RegExp(`env\\[1\\] \\(${name}\\): a literal value would put the collector's credentials in the spec of every injected pod.*valueFrom\\.secretKeyRef`), name);
    t.notMatch(err?.message, /s3cr3t/, `${name}: the value is not in the message`);
    t.doesNotThrow(() => buildConfig({ image: IMAGE, env: [{ name, valueFrom: { secretKeyRef: { name: 'otel-auth', key: 'headers' } } }] }), `${name} from a Secret is taken`);
  }
  t.doesNotThrow(() => buildConfig({ image: IMAGE, env: [{ name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'https://collector:4318' }] }), 'other literals are taken');
  // A ConfigMap's key is as readable as a literal: a Secret only.
  t.throws(() => buildConfig({ image: IMAGE, env: [{ name: 'OTEL_EXPORTER_OTLP_HEADERS', valueFrom: { configMapKeyRef: { name: 'otel', key: 'headers' } } }] }), /env\[0\] \(OTEL_EXPORTER_OTLP_HEADERS\): the collector's credentials come from a Secret only: give it with valueFrom\.secretKeyRef, not configMapKeyRef/);
});

t.test('a resourceFieldRef divisor: one the API server refuses stops the injector; one it re-spells is given as it stores it', async (t) => {
  const env = (divisor: unknown, resource = 'limits.memory') => [{ name: 'MEMORY_LIMIT', valueFrom: { resourceFieldRef: { resource, divisor } } }];
  for (const [divisor, resource] of [['3Mi', 'limits.memory'], [2, 'limits.memory'], ['1Mi', 'limits.cpu'], ['0.5', 'requests.cpu']] as const) {
    t.throws(() => buildConfig({ image: IMAGE, env: env(divisor, resource) }), /env\[0\] \(MEMORY_LIMIT\): valueFrom\.resourceFieldRef\.divisor .* is none the API server takes for/, `${JSON.stringify(divisor)} for ${resource}: refused`);
  }
  for (const [divisor, stored] of [[1000, '1k'], ['1000000', '1M'], ['1Mi', '1Mi'], [1, '1'], ['1Pi', '1Pi'], ['1Ei', '1Ei'], ['1000T', '1P'], ['1024Pi', '1Ei'], [1e18, '1E']] as const) {
    t.equal((buildConfig({ image: IMAGE, env: env(divisor) }).env[0]!.valueFrom as { resourceFieldRef: { divisor: string } }).resourceFieldRef.divisor, stored, `${JSON.stringify(divisor)} is given as ${stored}`);
  }
  t.equal((buildConfig({ image: IMAGE, env: env('1000m', 'limits.cpu') }).env[0]!.valueFrom as { resourceFieldRef: { divisor: string } }).resourceFieldRef.divisor, '1', 'cpu 1000m is 1');
  // The pod as the API server stores it after the first review, asked about again: still the injector's sidecar.
  const injector = await startInjectorServer({ config: buildConfig({ image: IMAGE, env: env(1000) }), tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key'), host: '127.0.0.1', port: 0, certCheckIntervalMs: 0, log: () => {} });
  t.teardown(() => injector.close());
  const pod = appPod({ labels: { 'driftguard.io/inject': 'true' } });
  const stored = patched(pod, (await review(t, injector, pod)).got.response);
  const variable = sidecarOf(stored).env.find((e: { name: string }) => e.name === 'MEMORY_LIMIT');
  variable.valueFrom.resourceFieldRef.divisor = '1k';
  t.equal((await review(t, injector, stored)).got.response.patch, undefined, 'left alone at the second review (it was refused: 1000 came back as 1k)');
});

t.test('an env variable listed twice is refused, naming the second (the later would win in the pod, unsaid)', async (t) => {
  t.throws(() => buildConfig({ image: IMAGE, env: [{ name: 'OTEL_SERVICE_NAME', value: 'orders' }, { name: 'OTEL_SERVICE_NAME', value: 'payments' }] }),
    /env\[1\]\.name: OTEL_SERVICE_NAME is listed twice/);
});

t.test('an env entry\'s valueFrom must be a core/v1 EnvVarSource: the API server would refuse every pod injected otherwise', async (t) => {
  const start = (valueFrom: unknown) => () => buildConfig({ image: IMAGE, env: [{ name: 'OTEL_SERVICE_NAME', value: 'orders' }, { name: 'OTEL_EXPORTER_OTLP_CERTIFICATE', valueFrom }] });
  const refused: [string, unknown, RegExp][] = [
    ['empty', {}, /exactly one source .*not none/],
    ['misspelt', { secretKeyref: { name: 'otel-auth', key: 'headers' } }, /valueFrom\.secretKeyref is not a source/],
    ['two sources', { secretKeyRef: { name: 'a', key: 'b' }, configMapKeyRef: { name: 'c', key: 'd' } }, /exactly one source .*not secretKeyRef and configMapKeyRef/],
    ['secretKeyRef without key', { secretKeyRef: { name: 'otel-auth' } }, /valueFrom\.secretKeyRef: must have required property 'key'/],
    ['configMapKeyRef without name', { configMapKeyRef: { key: 'k' } }, /valueFrom\.configMapKeyRef: must have required property 'name'/],
    ['fieldRef without fieldPath', { fieldRef: { apiVersion: 'v1' } }, /valueFrom\.fieldRef: must have required property 'fieldPath'/],
    ['resourceFieldRef with an unknown field', { resourceFieldRef: { resource: 'limits.memory', unit: 'Mi' } }, /valueFrom\.resourceFieldRef: must NOT have additional properties \(unit\)/],
  ];
  for (const [name, valueFrom, why] of refused) {
    t.throws(start(valueFrom), { message: /env\[1\] \(OTEL_EXPORTER_OTLP_CERTIFICATE\): / }, `${name}: the message names the entry`);
    t.throws(start(valueFrom), { message: why }, `${name}: and what is wrong`);
    t.throws(start(valueFrom), { message: /the API server would refuse every pod injected with it/ }, `${name}: and why it matters`);
  }
  for (const valueFrom of [
    { fieldRef: { fieldPath: 'status.hostIP' } },
    { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } },
    { resourceFieldRef: { containerName: 'driftguard', resource: 'limits.memory', divisor: '1Mi' } },
    { configMapKeyRef: { name: 'otel', key: 'endpoint', optional: true } },
    { secretKeyRef: { name: 'otel-auth', key: 'headers' } },
  ]) t.doesNotThrow(start(valueFrom), JSON.stringify(valueFrom));
});
