// values.schema.json: helm refuses bad values with a message naming the value, and
// accepts good ones (so the schema is not simply refusing everything). Also checks
// that the schema covers every value in values.yaml.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { helm, CHART } from './helm.ts';

function template(set: string[]) {
  return helm(['template', 'dg', CHART, '--namespace', 'driftguard-system', ...set.flatMap((s) => ['--set', s])]);
}

t.test('bad values are rejected, naming the value', async (t) => {
  const cases: [string, RegExp][] = [
    ['webhook.failurePolicy=Sometimes', /webhook\/failurePolicy/],
    ['webhook.timeoutSeconds=60', /webhook\/timeoutSeconds/],
    ['webhook.namespaceSelector.matchExpressions[0].key=x', /operator/],
    // In and NotIn need values (the API server refused the webhook configuration halfway through the install); Exists takes none.
    ...[['In'], ['NotIn']].map(([op]): [string, RegExp] => [`webhook.namespaceSelector.matchExpressions[0].key=x,webhook.namespaceSelector.matchExpressions[0].operator=${op}`, /missing property 'values'/]),
    ['webhook.namespaceSelector.matchExpressions[0].key=x,webhook.namespaceSelector.matchExpressions[0].operator=Exists,webhook.namespaceSelector.matchExpressions[0].values[0]=a', /matchExpressions\/0/],
    ['webhook.certManager.issuerRef.kind=Foo', /issuerRef\/kind/],
    ['sidecar.native=maybe', /sidecar\/native/],
    ['sidecar.listenPort=0', /sidecar\/listenPort/],
    ['sidecar.upstreamPort=70000', /sidecar\/upstreamPort/],
    ['sidecar.rulesConfigMap=Orders_Rules', /sidecar\/rulesConfigMap/],
    ['sidecar.resources.limits.memory=lots', /sidecar\/resources\/limits\/memory/],
    ['sidecar.resources.limits.gpu=1', /gpu/],
    ['sidecar.runAsUser=0', /sidecar\/runAsUser/],
    ['sidecar.colour=blue', /colour/],
    ['injector.replicas=0', /injector\/replicas/],
    ['injector.port=443', /injector\/port/],
    ['injector.podDisruptionBudget.maxUnavailable=lots', /maxUnavailable/],
    // 0% blocked every voluntary eviction of the injector, and node drains with it.
    ['injector.podDisruptionBudget.maxUnavailable=0%', /maxUnavailable/],
    // Not a ConfigMap key (..data is the kubelet's own symlink): the sidecar read a directory.
    ['sidecar.rulesFile=..', /sidecar\/rulesFile/],
    ['sidecar.rulesFile=..data', /sidecar\/rulesFile/],
    ['image.pullPolicy=Sometimes', /image\/pullPolicy/],
    ['image.digest=latest', /image\/digest/],
    ['serviceAccount.create=yes', /serviceAccount\/create/],
    ['exampleRules.namespace=Not A Namespace', /exampleRules\/namespace/],
    ['colour=blue', /colour/],
    // `--set x=null` removes the value: the injector then refused its own config and crashlooped.
    // (Those added after the chart's first values, grace, drainDelay, adminLocalPort,
    // serviceAccountToken and ipFamily, take their default when absent: render.test.ts.)
    ...(['runAsUser', 'nodeOptions', 'tmpSizeLimit', 'rulesFile'] as const).map((k): [string, RegExp] => [`sidecar.${k}=null`, new RegExp(`missing property '${k}'`)]),
  ];
  for (const [set, message] of cases) {
    const r = template([set]);
    t.not(r.status, 0, `${set}: refused`);
    t.match(r.stderr, message, `${set}: names the value`);
  }
});

t.test('a native sidecar forced on a cluster that has none is refused at install', async (t) => {
  const old = helm(['template', 'dg', CHART, '--namespace', 'driftguard-system', '--kube-version', '1.27.0', '--set', 'sidecar.native=true']);
  t.not(old.status, 0);
  t.match(old.stderr, /sidecar\.native=true needs Kubernetes >= 1\.28 \(with the SidecarContainers feature gate before 1\.29; this is v1\.27\.0\)/);
  const ok = helm(['template', 'dg', CHART, '--namespace', 'driftguard-system', '--kube-version', '1.28.0', '--set', 'sidecar.native=true']);
  t.equal(ok.status, 0, '1.28 has them behind a feature gate');
});

t.test('two sidecar ports alike are refused at install, not by the injector at admission', async (t) => {
  // The injector refuses them at start; with failurePolicy Fail every opted-in pod was then refused.
  for (const [set, names] of [
    ['sidecar.adminPort=15080', /sidecar\.adminPort and sidecar\.listenPort are both 15080/],
    ['sidecar.upstreamPort=15000', /sidecar\.adminLocalPort and sidecar\.upstreamPort are both 15000/],
    ['sidecar.upstreamPort=15021', /sidecar\.adminPort and sidecar\.upstreamPort are both 15021/],
  ] as const) {
    const r = template([set]);
    t.not(r.status, 0, `${set}: refused`);
    t.match(r.stderr, names);
  }
  t.equal(template(['sidecar.upstreamPort=9000']).status, 0, 'ports that differ are fine');
});

t.test('a release name that makes the injector\'s Service name invalid is refused at install, saying what to do', async (t) => {
  const r = helm(['template', 'my.rel', CHART, '--namespace', 'driftguard-system']);
  t.not(r.status, 0, 'refused');
  t.match(r.stderr, /the injector's Service would be named "my\.rel-driftguard-injector", which is not a DNS label.*fullnameOverride/);
  const fixed = helm(['template', 'my.rel', CHART, '--namespace', 'driftguard-system', '--set', 'fullnameOverride=myrel-driftguard']);
  t.equal(fixed.status, 0, fixed.stderr);
});

t.test('good values are accepted', async (t) => {
  for (const set of [
    [],
    ['sidecar.native=true'],
    ['sidecar.native=false'],
    ['webhook.failurePolicy=Ignore', 'webhook.reinvocationPolicy=Never'],
    ['injector.podDisruptionBudget.maxUnavailable=50%'],
    ['webhook.certManager.enabled=true', 'webhook.certManager.issuerRef.name=corp-ca', 'webhook.certManager.issuerRef.kind=ClusterIssuer'],
    ['sidecar.resources.limits.cpu=500m', 'sidecar.resources.limits.memory=256Mi'],
    ['image.digest=sha256:' + '0'.repeat(64)],
  ]) {
    const r = template(set);
    t.equal(r.status, 0, `${set.join(' ') || '(defaults)'}: ${r.stderr}`);
  }
});

t.test('the schema describes every value in values.yaml, and forbids unknown keys', async (t) => {
  const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8'));
  const values = parseYaml(readFileSync(join(CHART, 'values.yaml'), 'utf8'));
  const resolve = (node: any): any => {
    if (node?.$ref) return resolve(node.$ref.split('/').slice(1).reduce((n: any, k: string) => n[k], schema));
    if (node?.allOf) return resolve(node.allOf[0]);
    return node;
  };
  const walk = (value: unknown, node: any, path: string) => {
    node = resolve(node);
    t.ok(node, `${path} is in the schema`);
    if (!node || value === null || typeof value !== 'object' || Array.isArray(value)) return;
    if (node.properties) {
      // Maps of free-form keys (labels, annotations) use additionalProperties instead.
      t.equal(node.additionalProperties, false, `${path || '(top level)'} forbids unknown keys`);
      for (const [k, v] of Object.entries(value)) walk(v, node.properties[k], path ? `${path}.${k}` : k);
    }
  };
  walk(values, schema, '');
});
