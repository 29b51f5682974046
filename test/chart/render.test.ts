// charts/driftguard rendered by the real helm binary: lint, Kubernetes 1.28, 1.30 and 1.32,
// every object validated against the Kubernetes schemas, and explicit assertions on
// what the schemas cannot see (misspelled fields, names that must agree, the caBundle).

import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { helm, helmAsync, render, one, parseManifests, CHART, type K8sObject } from './helm.ts';
import { fakeKube } from '../support/fakekube.ts';
import { validateObject } from '../support/k8s.ts';
import { buildConfig, INJECTED_ENV } from '../../proxy/inject/config.ts';
import { sidecarContainer } from '../../proxy/inject/sidecar.ts';
import { parseRules } from '../../proxy/rules/load.ts';

const NS = 'driftguard-system';

t.test('helm lint --strict passes, with defaults and with the other modes', async (t) => {
  for (const set of [[], ['webhook.certManager.enabled=true'], ['sidecar.native=false', 'injector.replicas=1', 'exampleRules.enabled=false']]) {
    const r = helm(['lint', '--strict', CHART, ...set.flatMap((s) => ['--set', s])]);
    t.equal(r.status, 0, `lint ${set.join(' ') || '(defaults)'}: ${r.stdout}${r.stderr}`);
    t.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  }
});

for (const kubeVersion of ['1.28', '1.30', '1.32']) {
  t.test(`helm template --kube-version ${kubeVersion}`, async (t) => {
    const objects = render({ kubeVersion });

    t.test('every object is valid against the Kubernetes schemas', async (t) => {
      t.same(objects.map((o) => o.kind).sort(), [
        'ConfigMap', 'ConfigMap', 'Deployment', 'MutatingWebhookConfiguration', 'PodDisruptionBudget', 'Secret', 'Service', 'ServiceAccount',
      ]);
      for (const o of objects) t.doesNotThrow(() => validateObject(o), `${o.kind} ${o.metadata.name}`);
    });

    t.test('labels and namespaces', async (t) => {
      for (const o of objects) {
        const l = o.metadata.labels ?? {};
        t.equal(l['app.kubernetes.io/name'], 'driftguard', `${o.kind} name label`);
        t.equal(l['app.kubernetes.io/instance'], 'dg', `${o.kind} instance label`);
        t.equal(l['app.kubernetes.io/managed-by'], 'Helm', `${o.kind} managed-by label`);
        t.ok(l['app.kubernetes.io/version'], `${o.kind} version label`);
        t.ok(l['app.kubernetes.io/component'], `${o.kind} component label`);
        if (o.kind !== 'MutatingWebhookConfiguration') t.equal(o.metadata.namespace, NS, `${o.kind} is namespaced in the release namespace`);
      }
    });

    t.test('sidecar mode follows the cluster version; the injector accepts its config', async (t) => {
      const injectorConfig = one(objects, 'ConfigMap', 'dg-driftguard-injector');
      const config = buildConfig(parseYaml(injectorConfig.data['injector.yaml']), 'rendered injector.yaml');
      t.equal(config.nativeSidecar, kubeVersion === '1.32', 'native sidecar from 1.32 (a named targetPort reaches an init container\'s port from then on)');
      t.equal(config.image, 'ghcr.io/driftguard/driftguard:0.1.0', 'image tag defaults to appVersion');
      t.equal(config.resources.limits.memory, '320Mi');
      t.equal(config.rulesConfigMap, 'driftguard-rules');
      t.match(config.nodeOptions, /--max-old-space-size=\d+/);
    });

    t.test('webhook: selectors, failure policy, service and a CA that signed the serving certificate', async (t) => {
      const mwc = one(objects, 'MutatingWebhookConfiguration');
      const service = one(objects, 'Service');
      const secret = one(objects, 'Secret');
      t.same(mwc.webhooks.map((w: { name: string }) => w.name), ['namespace.inject.driftguard.io', 'object.inject.driftguard.io']);
      for (const w of mwc.webhooks) {
        t.equal(w.failurePolicy, 'Fail');
        t.equal(w.sideEffects, 'None');
        t.equal(w.reinvocationPolicy, 'IfNeeded', 'asked again after a later webhook (Istio\'s) changed the pod');
        t.same(w.admissionReviewVersions, ['v1']);
        t.same(w.rules, [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }]);
        t.same(w.clientConfig.service, { name: service.metadata.name, namespace: NS, path: '/mutate', port: 443 });
        t.equal(w.clientConfig.caBundle, secret.data['ca.crt'], 'caBundle is the CA of the served certificate');
      }
      const [byNamespace, byPod] = mwc.webhooks;
      t.same(byNamespace.namespaceSelector.matchLabels, { 'driftguard.io/inject': 'true' });
      t.same(byNamespace.namespaceSelector.matchExpressions, byPod.namespaceSelector.matchExpressions, 'the excluded namespaces stay out of the namespace webhook too (before: only the pod webhook)');
      // "true" too: such a pod is the object webhook's, reviewed once (twice, its second review saw the sidecar as the API server stored it).
      t.same(byNamespace.objectSelector, { matchExpressions: [{ key: 'driftguard.io/inject', operator: 'NotIn', values: ['false', 'true'] }] }, 'a pod can opt out, and one that opts in is the other webhook\'s');
      t.same(byPod.objectSelector, { matchLabels: { 'driftguard.io/inject': 'true' } });
      const excluded = byPod.namespaceSelector.matchExpressions[0];
      t.equal(excluded.key, 'kubernetes.io/metadata.name');
      t.equal(excluded.operator, 'NotIn');
      t.ok(excluded.values.includes('kube-system') && excluded.values.includes(NS), 'kube-system and the release namespace are never injected');

      const ca = new X509Certificate(Buffer.from(secret.data['ca.crt'], 'base64'));
      const cert = new X509Certificate(Buffer.from(secret.data['tls.crt'], 'base64'));
      t.ok(ca.ca, 'caBundle holds a CA certificate');
      t.ok(cert.verify(ca.publicKey), 'the serving certificate is signed by the caBundle CA');
      t.equal(cert.checkHost(`${service.metadata.name}.${NS}.svc`), `${service.metadata.name}.${NS}.svc`, 'valid for the Service DNS name the API server uses');
      t.ok(Date.parse(cert.validTo) > Date.now() + 365 * 86_400_000, 'valid for more than a year');
      t.equal(secret.type, 'kubernetes.io/tls');
      t.ok(Buffer.from(secret.data['tls.key'], 'base64').toString().includes('PRIVATE KEY'));
    });

    t.test('injector Deployment: wired to its Secret, ConfigMap, Service; hardened', async (t) => {
      const deployment = one(objects, 'Deployment');
      const service = one(objects, 'Service');
      const pdb = one(objects, 'PodDisruptionBudget');
      const secret = one(objects, 'Secret');
      const sa = one(objects, 'ServiceAccount');
      const pod = deployment.spec.template;
      t.same(deployment.spec.selector.matchLabels, service.spec.selector, 'Service selects the injector pods');
      t.same(pdb.spec.selector.matchLabels, service.spec.selector, 'PDB covers the injector pods');
      t.equal(pdb.spec.unhealthyPodEvictionPolicy, 'AlwaysAllow', 'replicas not ready do not hold a node drain');
      for (const [k, v] of Object.entries(service.spec.selector)) t.equal(pod.metadata.labels[k], v);
      t.equal(pod.metadata.labels['driftguard.io/inject'], 'false', 'the injector is never injected');
      t.equal(deployment.spec.replicas, 2);
      t.equal(pdb.spec.maxUnavailable, 1);
      t.equal(pod.spec.serviceAccountName, sa.metadata.name);
      t.equal(pod.spec.automountServiceAccountToken, false, 'the injector holds no API token');
      t.equal(sa.automountServiceAccountToken, false);
      const [c] = pod.spec.containers;
      t.equal(c.args[0], 'inject');
      const arg = (flag: string) => c.args[c.args.indexOf(flag) + 1];
      const mountOf = (file: string) => c.volumeMounts.find((m: { mountPath: string }) => file.startsWith(`${m.mountPath}/`));
      const volumeOf = (file: string) => pod.spec.volumes.find((v: { name: string }) => v.name === mountOf(file)?.name);
      t.equal(volumeOf(arg('--tls-cert'))?.secret?.secretName, secret.metadata.name, '--tls-cert comes from the webhook Secret');
      t.equal(volumeOf(arg('--tls-key'))?.secret?.secretName, secret.metadata.name, '--tls-key comes from the webhook Secret');
      t.equal(volumeOf(arg('--config'))?.configMap?.name, 'dg-driftguard-injector', '--config comes from the injector ConfigMap');
      t.equal(arg('--listen'), '0.0.0.0:9443');
      const httpsPort = c.ports.find((p: { name: string }) => p.name === service.spec.ports[0].targetPort);
      t.equal(httpsPort?.containerPort, 9443, 'Service targetPort names the container port');
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) t.equal(c[probe].httpGet.scheme, 'HTTPS', probe);
      t.equal(c.securityContext.readOnlyRootFilesystem, true);
      t.equal(c.securityContext.allowPrivilegeEscalation, false);
      t.same(c.securityContext.capabilities.drop, ['ALL']);
      t.equal(pod.spec.securityContext.runAsNonRoot, true);
      t.ok(c.resources.limits.memory, 'a memory limit');
      t.ok(pod.metadata.annotations['checksum/config'], 'config changes roll the injector');
      t.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0, 'rollouts never drop a serving replica');
    });

    t.test('the example rules ConfigMap is valid driftguard rules', async (t) => {
      const rules = one(objects, 'ConfigMap', 'driftguard-rules');
      t.equal(rules.metadata.namespace, NS);
      t.doesNotThrow(() => parseRules(rules.data['rules.yaml'], 'example rules'), 'parses with the core rules loader');
    });
  });
}

t.test('values change what they should', async (t) => {
  const native = (set: string[], kubeVersion: string) =>
    buildConfig(parseYaml(one(render({ kubeVersion, set }), 'ConfigMap', 'dg-driftguard-injector').data['injector.yaml'])).nativeSidecar;
  t.equal(native(['sidecar.native=true'], '1.28'), true, 'sidecar.native=true forces native');
  for (const [family, any] of [['IPv4', '0.0.0.0'], ['IPv6', '[::]']] as const) {
    const rendered = render({ set: [`ipFamily=${family}`] });
    t.equal(buildConfig(parseYaml(one(rendered, 'ConfigMap', 'dg-driftguard-injector').data['injector.yaml'])).ipFamily, family, `ipFamily=${family} reaches the injector's config`);
    const args: string[] = one(rendered, 'Deployment').spec.template.spec.containers[0].args;
    t.equal(args[args.indexOf('--listen') + 1], `${any}:9443`, `and the injector listens on ${any}`);
  }
  t.equal(native(['sidecar.native=false'], '1.30'), false, 'sidecar.native=false forces a regular container');

  const objects = render({ set: ['webhook.failurePolicy=Ignore', 'webhook.namespaceSelector.matchLabels.team=payments', 'image.digest=sha256:' + 'a'.repeat(64), 'injector.podDisruptionBudget.enabled=false', 'exampleRules.namespace=shop'] });
  const mwc = one(objects, 'MutatingWebhookConfiguration');
  t.same(mwc.webhooks.map((w: { failurePolicy: string }) => w.failurePolicy), ['Ignore', 'Ignore']);
  t.equal(mwc.webhooks[0].namespaceSelector.matchLabels.team, 'payments');

  // A selector of expressions only (a broad one: any namespace with an env label) keeps them,
  // and still leaves out kube-system and the release namespace.
  const broad = one(render({ set: ['webhook.namespaceSelector.matchLabels=null', 'webhook.namespaceSelector.matchExpressions[0].key=env', 'webhook.namespaceSelector.matchExpressions[0].operator=Exists'] }), 'MutatingWebhookConfiguration').webhooks[0].namespaceSelector;
  t.notOk('matchLabels' in broad, 'no empty matchLabels');
  t.same(broad.matchExpressions[0], { key: 'env', operator: 'Exists' });
  t.equal(broad.matchExpressions[1].operator, 'NotIn');
  t.ok(broad.matchExpressions[1].values.includes('kube-system') && broad.matchExpressions[1].values.includes(NS), 'kube-system and the release namespace are left out');
  // excludeNamespaces set to null (an override file's `excludeNamespaces:`) crashed rendering; the release namespace stays out.
  const none = one(render({ set: ['webhook.excludeNamespaces=null'] }), 'MutatingWebhookConfiguration').webhooks[0].namespaceSelector.matchExpressions;
  t.same(none.at(-1).values, [NS], 'excludeNamespaces=null: only the release namespace left out');
  t.equal(one(objects, 'Deployment').spec.template.spec.containers[0].image, `ghcr.io/driftguard/driftguard@sha256:${'a'.repeat(64)}`);
  t.equal(objects.filter((o) => o.kind === 'PodDisruptionBudget').length, 0);
  t.equal(one(objects, 'ConfigMap', 'driftguard-rules').metadata.namespace, 'shop');
});

t.test('sidecar.env reaches the injected sidecar after its own variables; one the injector sets is refused', async (t) => {
  const config = (set: string[]) => buildConfig(parseYaml(one(render({ set }), 'ConfigMap', 'dg-driftguard-injector').data['injector.yaml']));
  const env = config(['sidecar.env[0].name=OTEL_EXPORTER_OTLP_ENDPOINT', 'sidecar.env[0].value=https://collector.observability:4318', 'sidecar.env[1].name=OTEL_EXPORTER_OTLP_HEADERS', 'sidecar.env[1].valueFrom.secretKeyRef.name=otel-auth', 'sidecar.env[1].valueFrom.secretKeyRef.key=headers']).env;
  t.same(env, [
    { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'https://collector.observability:4318' },
    { name: 'OTEL_EXPORTER_OTLP_HEADERS', valueFrom: { secretKeyRef: { name: 'otel-auth', key: 'headers' } } },
  ]);
  const container = sidecarContainer(config(['sidecar.env[0].name=OTEL_SERVICE_NAME', 'sidecar.env[0].value=orders-sidecar']), { listenPort: 15080, upstreamPort: 8080, rulesConfigMap: 'r', grace: '20s' }) as { env: { name: string; value?: string }[] };
  t.same(container.env.at(-1), { name: 'OTEL_SERVICE_NAME', value: 'orders-sidecar' }, 'after the injector\'s own');
  t.equal(config([]).env.length, 0, 'none by default');
  // The list sidecar.env may not set is the one the sidecar's env sets: two lists that must agree.
  const own = (sidecarContainer(config([]), { listenPort: 15080, upstreamPort: 8080, rulesConfigMap: 'r', grace: '20s', drainDelay: '5s' }) as { env: { name: string }[] }).env.map((e) => e.name);
  t.same(own.sort(), [...INJECTED_ENV].sort(), 'INJECTED_ENV names what the injector sets');
  // The later of two would win: DRIFTGUARD_UPSTREAM set again could send traffic elsewhere.
  for (const name of ['DRIFTGUARD_UPSTREAM', 'NODE_OPTIONS', 'OTEL_RESOURCE_ATTRIBUTES']) {
    t.throws(() => config([`sidecar.env[0].name=${name}`, 'sidecar.env[0].value=x']), { message: new RegExp(`env\\[0\\]\\.name: ${name} is set by the injector itself`) }, name);
  }
  // Refused at install too, as every refusal of the injector's start: a fresh install would have no injector.
  for (const name of [...INJECTED_ENV, 'DRIFTGUARD_ANYTHING']) {
    const r = helm(['template', 'dg', CHART, '--namespace', NS, '--set', `sidecar.env[0].name=${name}`, '--set', 'sidecar.env[0].value=x']);
    t.not(r.status, 0, `${name}: refused at install`);
    t.match(r.stderr, new RegExp(`sidecar\\.env\\[0\\]\\.name: ${name} is set by the injector itself \\(${INJECTED_ENV.join(', ')}\\)`), `${name}: naming the list, which is the injector's`);
  }
  const twice = helm(['template', 'dg', CHART, '--namespace', NS, '--set', 'sidecar.env[0].name=OTEL_SERVICE_NAME', '--set', 'sidecar.env[0].value=a', '--set', 'sidecar.env[1].name=OTEL_SERVICE_NAME', '--set', 'sidecar.env[1].value=b']);
  t.not(twice.status, 0, 'a name listed twice: refused at install');
  t.match(twice.stderr, /sidecar\.env\[1\]\.name: OTEL_SERVICE_NAME is listed twice/);
  const r = helm(['template', 'dg', CHART, '--set', 'sidecar.env[0].name=X', '--namespace', NS]);
  t.not(r.status, 0, 'an entry with neither value nor valueFrom is refused by the chart\'s schema');
  // Literal values are checked as every injected sidecar would check them at its start.
  t.throws(() => config(['sidecar.env[0].name=OTEL_BSP_SCHEDULE_DELAY', 'sidecar.env[0].value=soon']), { message: /env: OTEL_BSP_SCHEDULE_DELAY=.*must be a number.*the sidecar would refuse to start/ });
  t.throws(() => config(['sidecar.env[0].name=OTEL_TRACES_EXPORTER', 'sidecar.env[0].value=jaeger']), { message: /env: OTEL_TRACES_EXPORTER/ });
  // What only the pod knows is left to the sidecar: a Secret's value, a file in the sidecar, $(VAR).
  t.doesNotThrow(() => config(['sidecar.env[0].name=OTEL_EXPORTER_OTLP_CERTIFICATE', 'sidecar.env[0].value=/etc/otel/ca.crt', 'sidecar.env[1].name=OTEL_EXPORTER_OTLP_ENDPOINT', 'sidecar.env[1].value=http://$(NODE_IP):4318', 'sidecar.env[2].name=OTEL_EXPORTER_OTLP_HEADERS', 'sidecar.env[2].valueFrom.secretKeyRef.name=otel-auth', 'sidecar.env[2].valueFrom.secretKeyRef.key=headers']));
  // The exporter's headers (a collector's API key) as a literal: in the ConfigMap and every injected pod's spec. Refused at install, never quoted.
  for (const name of ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS']) {
    const literal = helm(['template', 'dg', CHART, '--namespace', NS, '--set', 'sidecar.env[0].name=OTEL_SERVICE_NAME', '--set', 'sidecar.env[0].value=orders', '--set', `sidecar.env[1].name=${name}`, '--set', 'sidecar.env[1].value=api-key=s3cr3t']);
    t.not(literal.status, 0, `${name} as a literal: refused at install`);
    t.match(literal.stderr, new RegExp(`sidecar\\.env\\[1\\] \\(${name}\\): a literal value would put the collector's credentials.*valueFrom\\.secretKeyRef`), `${name}: the message names the entry and what to do`);
    t.notMatch(literal.stderr, /s3cr3t/, `${name}: and not the value`);
    const fromConfigMap = helm(['template', 'dg', CHART, '--namespace', NS, '--set', `sidecar.env[0].name=${name}`, '--set', 'sidecar.env[0].valueFrom.configMapKeyRef.name=otel', '--set', 'sidecar.env[0].valueFrom.configMapKeyRef.key=headers']);
    t.not(fromConfigMap.status, 0, `${name} from a ConfigMap: refused at install`);
    t.match(fromConfigMap.stderr, /come from a Secret only: give it with valueFrom\.secretKeyRef/);
  }
  // A valueFrom the API server refuses is refused at install, not in every injected pod.
  const valuesDir = mkdtempSync(join(tmpdir(), 'driftguard-values-'));
  const withValueFrom = (valueFrom: unknown) => {
    const file = join(valuesDir, 'values.yaml');
    writeFileSync(file, JSON.stringify({ sidecar: { env: [{ name: 'OTEL_SERVICE_NAME', valueFrom }] } }));
    return helm(['template', 'dg', CHART, '--namespace', NS, '-f', file]);
  };
  for (const [name, valueFrom] of [['empty', {}], ['misspelt', { secretKeyref: { name: 'a', key: 'b' } }], ['two sources', { secretKeyRef: { name: 'a', key: 'b' }, configMapKeyRef: { name: 'c', key: 'd' } }], ['secretKeyRef without key', { secretKeyRef: { name: 'a' } }], ['fieldRef with an unknown field', { fieldRef: { fieldPath: 'status.hostIP', path: 'x' } }]] as const) {
    const r = withValueFrom(valueFrom);
    t.not(r.status, 0, `valueFrom ${name}: refused at install`);
    t.match(r.stderr, /\/sidecar\/env\/0\/valueFrom/, `valueFrom ${name}: the error names the entry`);
  }
  for (const valueFrom of [{ fieldRef: { fieldPath: 'status.hostIP' } }, { fieldRef: { apiVersion: 'v1', fieldPath: 'status.hostIP' } }, { resourceFieldRef: { resource: 'limits.memory', divisor: '1Mi' } }, { resourceFieldRef: { resource: 'limits.memory', divisor: '1Ei' } }, { resourceFieldRef: { resource: 'requests.ephemeral-storage', divisor: '1P' } }, { configMapKeyRef: { name: 'c', key: 'k', optional: true } }, { secretKeyRef: { name: 'a', key: 'b' } }]) {
    t.equal(withValueFrom(valueFrom).status, 0, `valueFrom ${JSON.stringify(valueFrom)} installs`);
  }
  // Quantities as numbers (cpu: 1, as Kubernetes takes them, and as README's Guaranteed-pod advice writes them).
  const numeric = config(['sidecar.resources.limits.cpu=1', 'sidecar.resources.requests.cpu=1', 'sidecar.resources.requests.memory=320Mi']);
  t.same(numeric.resources, { requests: { cpu: '1', memory: '320Mi' }, limits: { cpu: '1', memory: '320Mi' } }, 'numeric quantities install, and the injector takes them as their strings');
  t.equal(config(['sidecar.grace=45s']).grace, '45s', 'sidecar.grace reaches the injector');
  // A request above its limit: the API server would refuse every injected pod. The chart refuses
  // at install exactly what the injector refuses at its start (with the chart's default limit of 320Mi).
  for (const [sets, refused] of [
    [['requests.memory=400Mi'], true], [['requests.memory=320Mi'], false], [['requests.memory=335544321'], true], [['requests.memory=0.3Gi'], false],
    [['requests.cpu=2', 'limits.cpu=1500m'], true], [['requests.cpu=1', 'limits.cpu=1000m'], false], [['requests.cpu=250m', 'limits.cpu=0.25'], false],
    [['requests.ephemeral-storage=1Ei', 'limits.ephemeral-storage=1E'], true], [['requests.cpu=4'], false],
    // Equal, spelt two ways: in floating point 700 × 0.001 is above 0.7.
    [['requests.cpu=700m', 'limits.cpu=0.7'], false], [['requests.cpu=2300m', 'limits.cpu=2.3'], false], [['requests.memory=0.5Gi', 'limits.memory=512Mi'], false],
  ] as const) {
    const flags = sets.flatMap((v) => ['--set', `sidecar.resources.${v}`]);
    const r = helm(['template', 'dg', CHART, '--namespace', NS, ...flags]);
    const requests: Record<string, string> = { cpu: '50m', memory: '128Mi' }; const limits: Record<string, string> = { memory: '320Mi' };
    for (const v of sets) { const [path, value] = v.split('='); const [list, name] = path!.split('.'); (list === 'requests' ? requests : limits)[name!] = value!; }
    let injectorRefused = false;
    try { buildConfig({ image: 'ghcr.io/x/driftguard:1', resources: { requests, limits } }); } catch { injectorRefused = true; }
    t.equal(injectorRefused, refused, `${sets.join(' ')}: the injector ${refused ? 'refuses' : 'takes'} it`);
    t.equal(r.status !== 0, refused, `${sets.join(' ')}: helm ${refused ? 'refuses' : 'takes'} it`);
    if (refused) t.match(r.stderr, /sidecar\.resources\.requests\.[a-z-]+: \S+ is above sidecar\.resources\.limits\.[a-z-]+ \(\S+\); the API server refuses/, `${sets.join(' ')}: the message names both`);
  }
  t.same(config(['image.mirrors[0]=mirror.corp', 'image.mirrors[1]=cache.corp:5000/hub']).imageMirrors, ['mirror.corp', 'cache.corp:5000/hub'], 'image.mirrors reach the injector');
  t.same(config([]).imageMirrors, [], 'none by default');
  t.not(helm(['template', 'dg', CHART, '--set', 'sidecar.grace=soon', '--namespace', NS]).status, 0, 'a grace that is not a duration is refused at install');
  // The chart refuses at install every grace the injector would refuse at start (it would
  // crash-loop, and with failurePolicy Fail every opted-in pod be refused), and no other.
  for (const grace of ['P', 'PT', 'P1DT', 'PT1', 'P1M', '25d', '24.5d', 'P25D', 'PT577H', 'P24DT1S', '2073600001ms', '24d', 'P24D', 'PT576H', '2073600000ms', 'P1DT2H30M', 'PT0.5S', '1.5h', '500ms']) {
    let injector: string;
    try { buildConfig({ image: 'x:1', grace }); injector = 'starts'; } catch (e) { injector = `refuses: ${(e as Error).message}`; }
    const r = helm(['template', 'dg', CHART, '--set', `sidecar.grace=${grace}`, '--namespace', NS]);
    t.equal(r.status === 0 ? 'starts' : 'refused at install', injector === 'starts' ? 'starts' : 'refused at install', `sidecar.grace=${grace}: the injector ${injector}`);
  }
  t.match(helm(['template', 'dg', CHART, '--set', 'sidecar.grace=25d', '--namespace', NS]).stderr, /sidecar\.grace "25d" is longer than 24d/, 'above 24d: the message names the value');
  t.equal(config([]).drainDelay, '5s', 'a drain delay of 5s by default');
  t.equal(config(['sidecar.drainDelay=0s']).drainDelay, '0s', 'sidecar.drainDelay reaches the injector');
  // The drain delay likewise, alone and with the grace (one stop deadline: at most 24d in all).
  for (const [drainDelay, grace] of [['soon', '20s'], ['PT', '20s'], ['25d', '20s'], ['0s', '24d'], ['1ms', '24d'], ['4d', '20d'], ['4.5d', '20d'], ['PT5S', '20s'], ['500ms', '1.5h']]) {
    let injector: string;
    try { buildConfig({ image: 'x:1', grace, drainDelay }); injector = 'starts'; } catch (e) { injector = `refuses: ${(e as Error).message}`; }
    const r = helm(['template', 'dg', CHART, '--set', `sidecar.drainDelay=${drainDelay}`, '--set', `sidecar.grace=${grace}`, '--namespace', NS]);
    t.equal(r.status === 0 ? 'starts' : 'refused at install', injector === 'starts' ? 'starts' : 'refused at install', `sidecar.drainDelay=${drainDelay} with grace ${grace}: the injector ${injector}`);
  }
  t.match(helm(['template', 'dg', CHART, '--set', 'sidecar.drainDelay=4.5d', '--set', 'sidecar.grace=20d', '--namespace', NS]).stderr, /sidecar\.drainDelay "4\.5d" and sidecar\.grace "20d" are longer than 24d in all/, 'the message names both');
  // `helm upgrade --reuse-values` from a release before drainDelay renders with that release's
  // values, which have none: the schema does not require it, and the injector gets 5s.
  const chart = join(mkdtempSync(join(tmpdir(), 'dg-chart-')), 'driftguard');
  cpSync(CHART, chart, { recursive: true });
  const values = readFileSync(join(CHART, 'values.yaml'), 'utf8');
  writeFileSync(join(chart, 'values.yaml'), values.replace(/\n  drainDelay: [^\n]*/, ''));
  t.notMatch(readFileSync(join(chart, 'values.yaml'), 'utf8'), /drainDelay: /, 'values without drainDelay (its comment aside)');
  const reused = helm(['template', 'dg', chart, '--namespace', NS]);
  t.equal(reused.status, 0, `a release's values without drainDelay install: ${reused.stderr}`);
  t.match(reused.stdout, /drainDelay: "5s"/, 'and the injector gets the default');
  // The same for every value added after the chart's first values (found by a review: a
  // release from before sidecar.grace failed the schema on --reuse-values).
  const older = values.replace(/\n  (drainDelay|grace|adminLocalPort|serviceAccountToken): [^\n]*/g, '').replace(/\nipFamily: [^\n]*/, '');
  writeFileSync(join(chart, 'values.yaml'), older);
  t.notMatch(older, /\n\s*(grace|adminLocalPort|serviceAccountToken|ipFamily): /, 'values without the later ones');
  const first = helm(['template', 'dg', chart, '--namespace', NS]);
  t.equal(first.status, 0, `the first values install: ${first.stderr}`);
  const fromFirst = buildConfig(parseYaml(one(parseManifests(first.stdout), 'ConfigMap', 'dg-driftguard-injector').data['injector.yaml']));
  const fromNow = config([]);
  t.same([fromFirst.grace, fromFirst.adminLocalPort, fromFirst.serviceAccountToken, fromFirst.ipFamily], [fromNow.grace, fromNow.adminLocalPort, fromNow.serviceAccountToken, fromNow.ipFamily], 'and the injector the same defaults as values.yaml gives');
});

t.test('cert-manager mode: a Certificate and the cainjector annotation instead of a generated CA', async (t) => {
  const objects = render({ kubeVersion: '1.30', set: ['webhook.certManager.enabled=true'] });
  t.equal(objects.filter((o) => o.kind === 'Secret').length, 0, 'no chart-generated Secret');
  for (const o of objects.filter((o) => !o.apiVersion.startsWith('cert-manager.io/'))) t.doesNotThrow(() => validateObject(o), `${o.kind} ${o.metadata.name}`);
  const certificates = objects.filter((o) => o.kind === 'Certificate');
  const issuers = objects.filter((o) => o.kind === 'Issuer');
  // A CA of the chart's own issues the serving certificate: renewing that one keeps the trust anchor.
  const ca = certificates.find((c) => c.spec.isCA === true)!;
  const certificate = certificates.find((c) => c !== ca)!;
  const selfSigned = issuers.find((i) => 'selfSigned' in i.spec)!;
  const issuer = issuers.find((i) => 'ca' in i.spec)!;
  t.equal(certificates.length, 2);
  t.same(ca.spec.issuerRef, { name: selfSigned.metadata.name, kind: 'Issuer', group: 'cert-manager.io' }, 'the CA is self-signed');
  t.equal(ca.spec.privateKey.rotationPolicy, 'Never', 'and keeps its key');
  t.equal(ca.spec.duration, '87600h', 'for webhook.certValidityDays');
  t.equal(issuer.spec.ca.secretName, ca.spec.secretName, 'the CA issuer signs with the CA\'s Secret');
  const deployment = one(objects, 'Deployment');
  const mwc = one(objects, 'MutatingWebhookConfiguration');
  const service = one(objects, 'Service');
  t.equal(certificate.apiVersion, 'cert-manager.io/v1');
  t.same(selfSigned.spec, { selfSigned: {} });
  t.same(certificate.spec.issuerRef, { name: issuer.metadata.name, kind: 'Issuer', group: 'cert-manager.io' });
  t.ok(certificate.spec.dnsNames.includes(`${service.metadata.name}.${NS}.svc`));
  const tlsVolume = deployment.spec.template.spec.volumes.find((v: { name: string }) => v.name === 'webhook-tls');
  t.equal(tlsVolume.secret.secretName, certificate.spec.secretName, 'the injector mounts the Secret cert-manager writes');
  t.equal(mwc.metadata.annotations?.['cert-manager.io/inject-ca-from'], `${NS}/${certificate.metadata.name}`);
  for (const w of mwc.webhooks) t.equal(w.clientConfig.caBundle, undefined, 'caBundle is left to the cainjector');

  // cert-manager refuses a commonName over 64 characters: a long release and namespace must
  // not produce one (the serving certificate has none, the CA a short fixed one).
  const long = render({ release: 'payments-platform-production-eu-west-1-blue', namespace: 'driftguard-system-production', set: ['webhook.certManager.enabled=true'] });
  const longCertificates = long.filter((o) => o.kind === 'Certificate');
  t.equal(longCertificates.length, 2);
  for (const c of longCertificates) t.ok((c.spec.commonName ?? '').length <= 64, `${c.metadata.name}: commonName ${JSON.stringify(c.spec.commonName)} within cert-manager's 64`);
  t.equal(longCertificates.find((c) => c.spec.isCA !== true)!.spec.commonName, undefined, 'the serving certificate has no commonName');
  t.ok(longCertificates.find((c) => c.spec.isCA !== true)!.spec.dnsNames.every((n: string) => n.startsWith('payments-platform-production-eu-west-1-blue-driftguard-injector')), 'its dnsNames name the Service');

  const withIssuer = render({ set: ['webhook.certManager.enabled=true', 'webhook.certManager.issuerRef.name=corp-ca', 'webhook.certManager.issuerRef.kind=ClusterIssuer'] });
  t.equal(withIssuer.filter((o) => o.kind === 'Issuer').length, 0, 'no self-signed Issuer when one is given');
  t.same(one(withIssuer, 'Certificate').spec.issuerRef, { name: 'corp-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' });
});

t.test('NOTES.txt tells how to opt in', async (t) => {
  const r = helm(['install', 'dg', CHART, '--dry-run=client', '--namespace', NS]);
  t.equal(r.status, 0, r.stderr);
  const notes = r.stdout.slice(r.stdout.indexOf('NOTES:'));
  t.match(notes, /kubectl label namespace <app-namespace> driftguard\.io\/inject=true/);
  t.match(notes, /create configmap driftguard-rules/);
  t.match(notes, /rollout status deployment\/dg-driftguard-injector/);
  // By name, as the README and examples/app.yaml: a pod without the sidecar is no endpoint.
  t.match(notes, /targetPort: driftguard\b/, 'step 4 names the sidecar\'s port');
  t.notMatch(notes, /targetPort at 15080/, 'not its number');
  // helm install has no --kube-version: the cluster's version comes from a fake API server.
  for (const [minor, set, named] of [[32, [], true], [30, [], true], [30, ['sidecar.native=true'], false]] as const) {
    const kube = await fakeKube(minor);
    const r = await helmAsync(['install', 'dg', CHART, '--dry-run=server', '--disable-openapi-validation', '--namespace', NS, ...set.flatMap((s) => ['--set', s])], { KUBECONFIG: kube.kubeconfig });
    await kube.close();
    t.equal(r.status, 0, r.stderr);
    const step = r.stdout.slice(r.stdout.indexOf('4. Route'), r.stdout.indexOf('5. Check'));
    t.match(step, named ? /targetPort: driftguard/ : /targetPort at 15080/, `Kubernetes 1.${minor} ${set.join(' ') || 'auto'}: ${named ? 'by name' : 'the number (a named port does not reach a native sidecar before 1.32)'}`);
  }
});

export type { K8sObject };
