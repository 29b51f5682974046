// driftguard laid out as its image lays it out (Dockerfile): /app/proxy from the build
// stage's JavaScript (tsconfig.build.json), /app/rules from the repository, package.json,
// and the production dependencies alone (npm ci --omit=dev). Used by the build test, the
// demo's layout test and the benchmark, so all run what ships.

import { execFileSync } from 'node:child_process';
import { cpSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../..');

/** Build into `dir`/build, lay out `dir`/app, and return the app directory. */
export function imageLayout(dir: string): string {
  const out = join(dir, 'build');
  execFileSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', out], { cwd: ROOT, stdio: 'pipe' });
  const app = join(dir, 'app');
  cpSync(join(out, 'proxy'), join(app, 'proxy'), { recursive: true });
  cpSync(join(ROOT, 'rules'), join(app, 'rules'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(app, 'package.json'));
  // Copied, not linked: a checkout in a directory only its owner may enter (mktemp -d makes
  // one 0700) hid a linked node_modules from the image's uid 65532, and the demo found no
  // `yaml`. And only what --omit=dev installs, as in the image: a runtime import of a
  // development dependency fails here as it would there.
  const installed = JSON.parse(readFileSync(join(ROOT, 'node_modules/.package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  for (const [path, meta] of Object.entries(installed.packages)) {
    // Top-level packages only: a copy takes the packages nested in it along.
    if (meta.dev || !/^node_modules\/(@[^/]+\/)?[^/@][^/]*$/.test(path)) continue;
    cpSync(join(ROOT, path), join(app, path), { recursive: true });
  }
  return app;
}
