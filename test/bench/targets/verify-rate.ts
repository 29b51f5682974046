// The raw jose verify rate: jwtVerify over never-repeated ES256 tokens, one after another
// on one thread, with the options driftguard pins (issuer, audience, algorithm, required
// claims) and a local JWKS. The cold-path budget is a fraction of this rate.
// Usage: node verify-rate.ts JWKS_FILE TOKENS_FILE SECONDS ISSUER AUDIENCE

import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';

const [jwksFile, tokensFile, seconds, issuer, audience] = process.argv.slice(2) as [string, string, string, string, string];
const keys = createLocalJWKSet(JSON.parse(readFileSync(jwksFile, 'utf8')));
const tokens = readFileSync(tokensFile, 'utf8').split('\n').filter(Boolean);
const options = { issuer, audience: [audience], algorithms: ['ES256'], requiredClaims: ['exp', 'sub'], clockTolerance: 30 };

// Warm up the JIT, then count for the given time.
for (let i = 0; i < 200; i++) await jwtVerify(tokens[i % tokens.length]!, keys, options);
const until = performance.now() + Number(seconds) * 1000;
const start = performance.now();
let n = 0;
while (performance.now() < until) {
  await jwtVerify(tokens[n % tokens.length]!, keys, options);
  n++;
}
const elapsed = (performance.now() - start) / 1000;
process.stdout.write(`BENCH_JSON ${JSON.stringify({ verifies: n, seconds: elapsed, rate: n / elapsed })}\n`);
