// driftguard laid out as its image lays it out (Dockerfile): /app/proxy from the build
// stage's JavaScript (tsconfig.build.json), /app/rules from the repository, package.json,
// and node_modules. Used by the build test and the benchmark, so both run what ships.

import { execFileSync } from 'node:child_process';
import { cpSync, symlinkSync } from 'node:fs';
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
  symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));
  return app;
}
