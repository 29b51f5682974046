// Validates Kubernetes objects against the API schemas shipped in `kubernetes-models`.
// It checks types, enums and required fields, but accepts misspelled fields: tests
// add explicit assertions on the fields that matter.

import * as models from 'kubernetes-models';

type ModelClass = new (data: unknown) => { validate(): void };

/** 'admissionregistration.k8s.io/v1' → models.admissionregistrationK8sIo.v1 ; 'v1' → models.v1 */
export function modelFor(apiVersion: string, kind: string): ModelClass | undefined {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const groupKey = group === '' ? undefined
    : group.split('.').map((part, i) => (i === 0 ? part : part[0].toUpperCase() + part.slice(1))).join('');
  const tree = models as unknown as Record<string, Record<string, Record<string, ModelClass>>>;
  const byVersion = groupKey === undefined ? (tree as unknown as Record<string, Record<string, ModelClass>>)[version] : tree[groupKey]?.[version];
  return byVersion?.[kind];
}

/** Throws with the object's kind and name and the schema's complaint. */
export function validateObject(obj: { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown } }): void {
  const where = `${String(obj.kind)} ${String(obj.metadata?.name)}`;
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') throw new Error(`${where}: no apiVersion/kind`);
  const Model = modelFor(obj.apiVersion, obj.kind);
  if (!Model) throw new Error(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
  try {
    new Model(obj).validate();
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}`);
  }
}
