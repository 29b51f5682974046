// Kubernetes facts shared by the sidecar (cluster identity) and the injector, which must agree:
// the injector mounts the token where the cluster issuer reads it.

/** Where a pod's service-account token and the cluster CA are mounted. */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** An RFC 1123 label (a namespace name): at most 63 characters. */
export function isDnsLabel(name: unknown): name is string {
  return typeof name === 'string' && name.length <= 63 && DNS_LABEL.test(name);
}

/** An RFC 1123 subdomain (a service account or ConfigMap name): at most 253 characters. */
export function isDnsSubdomain(name: unknown): name is string {
  return typeof name === 'string' && name.length <= 253 && DNS_SUBDOMAIN.test(name);
}
