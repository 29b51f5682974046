// charts/driftguard/examples: valid objects, valid rules, and — run through the real
// mutation with the injector config the chart renders — a pod whose Service port
// lands on the sidecar, which forwards to the app's port.

import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { CHART, parseManifests, render, one } from './helm.ts';
import { validateObject } from '../support/k8s.ts';
import { applyPatch } from '../support/json-patch.ts';
import { buildConfig } from '../../proxy/inject/config.ts';
import { mutate } from '../../proxy/inject/mutate.ts';
import { parseRules } from '../../proxy/rules/load.ts';

const objects = parseManifests(readFileSync(join(CHART, 'examples/app.yaml'), 'utf8'));

t.test('every example object is valid', async (t) => {
  t.same(objects.map((o) => o.kind), ['Namespace', 'ConfigMap', 'Deployment', 'Service', 'NetworkPolicy']);
  for (const o of objects) t.doesNotThrow(() => validateObject(o), `${o.kind} ${o.metadata.name}`);
  t.equal(one(objects, 'Namespace').metadata.labels?.['driftguard.io/inject'], 'true', 'the namespace opts in');
  // As a regular container the sidecar takes new connections for its drain delay after the
  // app's SIGTERM: the app waits at least as long (README, Route traffic through the sidecar).
  const app = one(objects, 'Deployment').spec.template.spec.containers.find((c: { name: string }) => c.name === 'app');
  const delay = parseYaml(readFileSync(join(CHART, 'values.yaml'), 'utf8')).sidecar.drainDelay as string;
  t.ok(app.lifecycle?.preStop?.sleep?.seconds >= Number.parseInt(delay, 10), `the app sleeps before its SIGTERM at least the drain delay (${delay})`);
});

t.test('the example rules are valid driftguard rules', async (t) => {
  const rules = one(objects, 'ConfigMap');
  const deployment = one(objects, 'Deployment');
  t.equal(deployment.spec.template.metadata.annotations['driftguard.io/rules'], rules.metadata.name, 'the pod names this ConfigMap');
  t.doesNotThrow(() => parseRules(rules.data['rules.yaml'], 'examples/app.yaml'));
});

for (const kubeVersion of ['1.28', '1.30', '1.32']) {
  t.test(`injected with the chart's config for ${kubeVersion}: Service → sidecar → app`, async (t) => {
    const rendered = render({ kubeVersion });
    const config = buildConfig(parseYaml(one(rendered, 'ConfigMap', 'dg-driftguard-injector').data['injector.yaml']));
    const deployment = one(objects, 'Deployment');
    const service = one(objects, 'Service');
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { ...structuredClone(deployment.spec.template.metadata), generateName: 'orders-api-', namespace: 'shop' }, spec: structuredClone(deployment.spec.template.spec) };
    const result = mutate({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'shop', object: pod } }, config);
    t.equal(result.outcome, 'injected');
    if (result.outcome === 'malformed') return;
    t.equal(result.review.response.warnings, undefined, 'no warnings for the example');
    const out = applyPatch(pod, result.patch as { op: string; path: string }[]);
    t.doesNotThrow(() => validateObject(out));
    const all = [...(out.spec.initContainers ?? []), ...out.spec.containers];
    const sidecar = all.find((c: { name: string }) => c.name === 'driftguard');
    t.equal(sidecar.restartPolicy, kubeVersion === '1.32' ? 'Always' : undefined);
    // The Service's targetPort names a port; it must resolve to the sidecar's listener.
    const target = service.spec.ports[0].targetPort;
    const resolved = all.flatMap((c: { ports?: { name?: string; containerPort: number }[] }) => c.ports ?? []).filter((p: { name?: string }) => p.name === target);
    t.equal(resolved.length, 1, 'targetPort resolves to exactly one port');
    t.equal(resolved[0].containerPort, Number(deployment.spec.template.metadata.annotations['driftguard.io/listen-port']));
    t.same(sidecar.ports.find((p: { name: string }) => p.name === target), resolved[0], 'and that port is the sidecar\'s');
    const upstream = sidecar.env.find((e: { name: string }) => e.name === 'DRIFTGUARD_UPSTREAM').value;
    const appPort = out.spec.containers.find((c: { name: string }) => c.name === 'app').ports[0].containerPort;
    t.equal(upstream, `http://127.0.0.1:${appPort}`, 'the sidecar forwards to the app');
    t.ok(one(objects, 'NetworkPolicy').spec.ingress[0].ports.some((p: { port: number }) => p.port === resolved[0].containerPort), 'the NetworkPolicy lets in the sidecar port');
    t.equal(out.spec.volumes.find((v: { name: string }) => v.name === 'driftguard-rules').configMap.name, 'orders-api-rules');
  });
}
