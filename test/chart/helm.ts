// Runs the real helm binary (from PATH, as `make unit` sets it, or from .tools/bin
// after `make tools`) against charts/driftguard, and parses what it renders.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { parseAllDocuments } from 'yaml';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const CHART = join(ROOT, 'charts/driftguard');

function findHelm(): string {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'helm'))) return join(dir, 'helm');
  }
  const local = join(ROOT, '.tools/bin/helm');
  if (existsSync(local)) return local;
  throw new Error('helm not found on PATH or in .tools/bin: run `make tools`');
}

export const HELM = findHelm();

export interface HelmResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const helmEnv = (env: Record<string, string> = {}) => ({ ...process.env, HELM_CACHE_HOME: join(ROOT, '.tools/helm-cache'), HELM_CONFIG_HOME: join(ROOT, '.tools/helm-config'), HELM_DATA_HOME: join(ROOT, '.tools/helm-data'), ...env });

export function helm(args: string[]): HelmResult {
  const r = spawnSync(HELM, args, { encoding: 'utf8', cwd: ROOT, env: helmEnv() });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** helm without blocking the event loop: for a run that talks to a server in this process (test/support/fakekube.ts). */
export function helmAsync(args: string[], env: Record<string, string> = {}): Promise<HelmResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(HELM, args, { cwd: ROOT, env: helmEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c; });
    child.stderr.on('data', (c: Buffer) => { stderr += c; });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: any;
}

export function parseManifests(text: string): K8sObject[] {
  return parseAllDocuments(text).map((d) => {
    if (d.errors.length) throw new Error(`rendered YAML does not parse: ${d.errors[0].message}`);
    return d.toJS() as K8sObject | null;
  }).filter((o): o is K8sObject => o !== null);
}

/** helm template with the given flags; throws with helm's stderr when it fails. */
export function render(options: { kubeVersion?: string; set?: string[]; namespace?: string; release?: string } = {}): K8sObject[] {
  const args = ['template', options.release ?? 'dg', CHART, '--namespace', options.namespace ?? 'driftguard-system'];
  if (options.kubeVersion) args.push('--kube-version', options.kubeVersion);
  for (const s of options.set ?? []) args.push('--set', s);
  const r = helm(args);
  if (r.status !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  return parseManifests(r.stdout);
}

export function one(objects: K8sObject[], kind: string, name?: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0];
}
