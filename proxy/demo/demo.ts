// `driftguard demo`: the embedded default. Generates a signing key (kept in .demo/ so that
// `driftguard token` can mint more by hand), serves its JWKS and a small payments API on
// loopback, starts driftguard with rules/demo.yaml, and prints curl lines with freshly
// minted tokens that show an allow, a warn and each kind of deny.

import { createServer, type Server } from 'node:http';
import { accessSync, constants, existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateKeyPair, exportJWK, type JWK } from 'jose';
import { loadRules, StartError } from '../rules/load.ts';
import { mint } from '../identity/mint.ts';
import { parseAddress } from '../lib/address.ts';
import type { Rules } from '../rules/types.ts';

/** What to do when a port of the demo's is taken. */
const MOVE_PORTS = 'free the port, or run `driftguard demo --rules FILE` with a copy of rules/demo.yaml on other ports';

/**
 * The directory that holds rules/demo.yaml: the first one up from this module that has it. Not
 * simply two levels up: run from the sources that is the checkout, but `make build` puts this
 * module in build/proxy/demo, and build/rules holds only the schema tsc copies. In the image
 * (/app/proxy, /app/rules) it is /app.
 */
function packageRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here, up = dirname(dir); ; dir = up, up = dirname(dir)) {
    if (existsSync(join(dir, 'rules', 'demo.yaml'))) return dir;
    if (up === dir) return join(here, '..', '..');
  }
}

export const ROOT = packageRoot();
export const DEMO_RULES = join(ROOT, 'rules', 'demo.yaml');

/**
 * Where the demo keeps its signing key: .demo/ beside rules/ (the checkout's, where the README
 * points `driftguard token --key` at it) when it holds one or can be made there; else a
 * directory of this user's own under the temporary directory. In the image /app is not the
 * user's (uid 65532) and the root filesystem may be read-only: mkdir /app/.demo failed there.
 */
export function demoKeyDir(): string {
  const local = join(ROOT, '.demo');
  if (existsSync(join(local, 'signing-key.json'))) return local;
  try { accessSync(existsSync(local) ? local : ROOT, constants.W_OK); return local; } catch { /* not ours to write */ }
  return join(tmpdir(), `driftguard-demo-${process.getuid?.() ?? 'user'}`);
}

/**
 * Why the demo may not keep its key in `dir`, if it may not. Under the shared temporary
 * directory only a directory of this user's own will do, so that nobody else can read the key
 * or put theirs in its place.
 */
function unusableKeyDir(dir: string): string | undefined {
  try {
    if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory()) return 'not a directory';
    if (dir !== join(ROOT, '.demo') && process.getuid && st.uid !== process.getuid()) return 'another user\'s directory';
    return undefined;
  } catch (err) { return (err as NodeJS.ErrnoException).code ?? 'error'; }
}

export async function demoKey(dir: string): Promise<{ privateJwk: JWK; publicJwk: JWK; file: string }> {
  const file = join(dir, 'signing-key.json');
  const problem = unusableKeyDir(dir);
  if (problem !== undefined) throw new StartError(`the demo cannot keep its signing key in ${dir} (${problem})`);
  if (existsSync(file)) {
    // Not JSON.parse's own message: V8 quotes the text around the fault, which is the private key.
    let privateJwk: JWK;
    try { privateJwk = JSON.parse(readFileSync(file, 'utf8')) as JWK; } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new StartError(code ? `cannot read the demo's signing key ${file} (${code})` : `the demo's signing key ${file} is not JSON (a truncated write?): delete it and the demo makes a new one`);
    }
    if (!privateJwk || typeof privateJwk !== 'object' || typeof privateJwk.kty !== 'string' || typeof privateJwk.d !== 'string') {
      throw new StartError(`the demo's signing key ${file} is not a private JWK: delete it and the demo makes a new one`);
    }
    // The demo's rules take ES256 alone. Its public half named member by member: dropping `d`
    // from another kind of key (an RSA key's p, q, dp, dq, qi) would publish its private key.
    if (privateJwk.kty !== 'EC' || privateJwk.crv !== 'P-256' || typeof privateJwk.x !== 'string' || typeof privateJwk.y !== 'string') {
      throw new StartError(`the demo's signing key ${file} is not an ES256 (EC P-256) key, which the demo's rules take: delete it and the demo makes a new one`);
    }
    const { kty, crv, x, y, kid, alg, use } = privateJwk;
    const publicJwk: JWK = { kty, crv, x, y, ...(kid !== undefined ? { kid } : {}), ...(alg !== undefined ? { alg } : {}), ...(use !== undefined ? { use } : {}) };
    return { privateJwk, publicJwk, file };
  }
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = `demo-${Date.now().toString(36)}`;
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' };
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  try { writeFileSync(file, JSON.stringify(privateJwk, null, 2) + '\n', { mode: 0o600 }); } catch (err) {
    throw new StartError(`the demo cannot write its signing key ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return { privateJwk, publicJwk, file };
}

/** Listen, or fail with a message naming the port, what it is for, and how to move it. */
function listen(server: Server, address: string, what: string): Promise<void> {
  const a = parseAddress(address)!;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new StartError(`the demo's ${what} cannot listen on ${address} (${err.code ?? err.message}): ${MOVE_PORTS}`)));
    server.listen(a.port, a.host, () => resolve());
  });
}

/** The demo API: answers every request with what it received (driftguard's headers included). */
export function demoApi(): Server {
  return createServer((req, res) => {
    let size = 0;
    req.on('data', (c: Buffer) => { size += c.length; });
    req.on('end', () => {
      const body = JSON.stringify({
        ok: true, method: req.method, path: req.url, bodyBytes: size,
        operation: req.headers['driftguard-operation'] ?? null,
        consumer: req.headers['driftguard-consumer'] ?? null,
        contract: req.headers['driftguard-contract'] ?? null,
      }) + '\n';
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
}

export function jwksServer(publicJwk: JWK): Server {
  const body = JSON.stringify({ keys: [publicJwk] });
  return createServer((req, res) => {
    if (req.url !== '/.well-known/jwks.json') { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': 'max-age=300' });
    res.end(body);
  });
}

/**
 * How long the printed tokens live: as long as an automation's token would (rules/demo.yaml
 * allows 1h). After that (and the rules' 30 s of clock skew) a line that needs a valid token
 * answers 401 "token expired", so the banner says when.
 */
export const DEMO_TOKEN_SECONDS = 900;

export interface Example {
  readonly title: string;
  readonly expect: number;
  readonly reason: string;
  readonly curl: string;
}

/** The curl lines the demo prints; the test runs each and checks status and reason. */
export async function examples(rules: Rules, key: JWK, now = Date.now()): Promise<Example[]> {
  const base = `http://${rules.proxy.listen}`;
  const iss = rules.identity.issuers[0]!;
  const aud = iss.audiences[0]!;
  const agent = 'spiffe://demo.local/ns/billing/sa/invoice-agent';
  const bot = 'spiffe://demo.local/ns/ops/sa/cleanup-bot';
  const t = (subject: string, scopes: string[], contract: string | undefined, lifetimeSeconds = DEMO_TOKEN_SECONDS) =>
    mint({ key, issuer: iss.issuer, audience: aud, subject, scopes, ...(contract ? { contract } : {}), lifetimeSeconds, now });
  const auth = (token: string) => `-H 'Authorization: Bearer ${token}'`;
  const all = ['accounts.read', 'accounts.admin', 'orders.read', 'payments.read', 'payments.write'];
  const curl = (args: string) => `curl -s -i ${args}`;
  return [
    { title: 'allow: an automation on the current contract reads an account', expect: 200, reason: 'allowed', curl: curl(`${auth(await t(agent, all, '2026-09'))} ${base}/accounts/42`) },
    { title: 'warn: a deprecated, low-sensitivity operation is forwarded with Deprecation, Sunset and Link headers', expect: 200, reason: 'deprecated-operation', curl: curl(`${auth(await t(agent, all, '2026-09'))} ${base}/orders`) },
    { title: 'warn: a stale contract on a low-sensitivity operation is forwarded and flagged', expect: 200, reason: 'stale-contract', curl: curl(`-X POST ${auth(await t(agent, all, '2026-06'))} ${base}/orders/search`) },
    { title: 'deny: a stale contract on a critical operation (payments changed in 2026-09)', expect: 409, reason: 'stale-contract', curl: curl(`-X POST ${auth(await t(agent, all, '2026-06'))} ${base}/payments`) },
    { title: 'deny: an automation deletes through the deprecated endpoint', expect: 403, reason: 'deprecated-operation', curl: curl(`-X DELETE ${auth(await t(bot, all, '2026-09'))} ${base}/accounts/42`) },
    { title: 'deny: an operation the contract does not have', expect: 403, reason: 'unknown-operation', curl: curl(`${auth(await t(agent, all, '2026-09'))} ${base}/admin/users`) },
    { title: 'deny: an operation past its sunset (for everybody)', expect: 410, reason: 'operation-sunset', curl: curl(`${base}/reports/legacy`) },
    { title: 'deny: no credential', expect: 401, reason: 'missing-credential', curl: curl(`${base}/accounts/42`) },
    { title: 'deny: a token that is not a valid signed JWT', expect: 401, reason: 'invalid-credential', curl: curl(`-H 'Authorization: Bearer not.a.token' ${base}/accounts/42`) },
    { title: 'deny: a long-lived token for an automation (24h > 1h)', expect: 401, reason: 'credential-lifetime-exceeded', curl: curl(`${auth(await t(agent, all, '2026-09', 86_400))} ${base}/accounts/42`) },
    { title: 'deny: a caller the registry does not know', expect: 403, reason: 'unknown-consumer', curl: curl(`${auth(await t('spiffe://demo.local/ns/x/sa/stranger', all, '2026-09'))} ${base}/accounts/42`) },
    { title: 'deny: a token without the operation\'s scope', expect: 403, reason: 'insufficient-scope', curl: curl(`-X POST ${auth(await t(agent, ['accounts.read'], '2026-09'))} ${base}/payments`) },
    { title: 'deny: an operation outside the consumer\'s declared operations', expect: 403, reason: 'undeclared-operation', curl: curl(`-X POST ${auth(await t(bot, all, '2026-09'))} ${base}/payments`) },
    { title: 'deny: an automation that declares no contract version', expect: 400, reason: 'contract-version-required', curl: curl(`${auth(await t(agent, all, undefined))} ${base}/accounts/42`) },
    { title: 'deny: a contract version the API never published', expect: 400, reason: 'unknown-contract-version', curl: curl(`${auth(await t(agent, all, undefined))} -H 'Contract-Version: 1999-01' ${base}/accounts/42`) },
    { title: 'deny: a non-canonical path (dot segments)', expect: 400, reason: 'malformed-request', curl: curl(`--path-as-is ${auth(await t(agent, all, '2026-09'))} ${base}/accounts/../admin`) },
  ];
}

/**
 * The rules the demo runs: rules/demo.yaml, or a copy named by DRIFTGUARD_DEMO_RULES (set by
 * `driftguard demo --rules FILE`), e.g. to move the demo off its fixed ports when they are taken.
 */
export function demoRulesFile(): string {
  return process.env.DRIFTGUARD_DEMO_RULES || DEMO_RULES;
}

/**
 * Where the demo serves its own key's JWKS: the first issuer's jwks.url, which it mints the
 * printed tokens for. Rules whose first issuer reads its keys otherwise (a file, discovery, a
 * kubernetes issuer) give it nowhere to serve them: refused before anything starts (it was a
 * raw "TypeError: Invalid URL" and a stack).
 */
function demoJwksUrl(rules: Rules, rulesFile: string): URL {
  const iss = rules.identity.issuers[0]!;
  if (iss.jwks.kind !== 'url') {
    throw new StartError(`${rulesFile}: the demo serves the first issuer's jwks.url itself (the JWKS of its own signing key, which mints the printed tokens), and ${iss.issuer} reads its keys from ${iss.jwks.kind === 'file' ? 'a file (jwks.file)' : 'a discovery document'} instead: list first an issuer with jwks: { url: http://127.0.0.1:<port>/.well-known/jwks.json }, as rules/demo.yaml does, or run these rules with \`driftguard run --config ${rulesFile}\``);
  }
  return new URL(iss.jwks.url);
}

/**
 * Where the demo's own server for `field` listens: the URL's host and port. It serves it itself,
 * over plain http, so the URL must say http and name its port: without one (a default port)
 * the demo ended with "Cannot read properties of undefined (reading 'port')" and a stack.
 */
function demoAddress(url: URL, field: string, rulesFile: string): string {
  const address = `${url.hostname}:${url.port}`;
  if (url.protocol !== 'http:' || url.port === '' || parseAddress(address) === undefined) {
    throw new StartError(`${rulesFile}: ${field} ${url.origin}: the demo serves it itself, over http on the port it names: give it as http://127.0.0.1:<port>/..., as rules/demo.yaml does, or run these rules with \`driftguard run --config ${rulesFile}\``);
  }
  return address;
}

export async function runDemo(start: (rules: Rules, file: string | undefined) => Promise<{ close(): Promise<void> }>, out: (line: string) => void = console.log): Promise<() => Promise<void>> {
  const rulesFile = demoRulesFile();
  const rules = loadRules(rulesFile);
  const url = demoJwksUrl(rules, rulesFile);
  const jwksAt = demoAddress(url, 'identity.issuers[0].jwks.url', rulesFile);
  const apiAt = demoAddress(new URL(rules.proxy.upstream), 'proxy.upstream', rulesFile);
  const { privateJwk, publicJwk, file } = await demoKey(demoKeyDir());
  const jwks = jwksServer(publicJwk);
  const api = demoApi();
  let dg: { close(): Promise<void> };
  try {
    await listen(jwks, jwksAt, 'JWKS server');
    await listen(api, apiAt, 'API');
    // A file given with --rules is reloaded as `run` reloads its file; the embedded one is not.
    dg = await start(rules, rulesFile === DEMO_RULES ? undefined : rulesFile).catch((err: unknown) => {
      // driftguard's own listener: what to do, as for the demo's servers (listen, above).
      throw err instanceof StartError ? new StartError(`${err.message}\n${MOVE_PORTS}`) : err;
    });
  } catch (err) {
    // What did start must not keep the process alive with nothing to show for it.
    jwks.close(); api.close();
    throw err;
  }
  out(`driftguard demo: listening on http://${rules.proxy.listen} in front of the demo API at ${rules.proxy.upstream}`);
  out(`admin: http://${rules.proxy.admin}/readyz   rules: ${rulesFile}   signing key: ${file}`);
  out('');
  const now = Date.now();
  const expiry = new Date((Math.floor(now / 1000) + DEMO_TOKEN_SECONDS) * 1000).toISOString();
  // The tokens' exp, as mint() sets it: the lines stop giving their "expect" after it.
  out(`# The tokens below expire at ${expiry.slice(11, 19)} UTC (${expiry.slice(0, 10)}, ${DEMO_TOKEN_SECONDS / 60} minutes from now): then (and 30 s of clock skew) the lines that need a valid token answer 401 invalid-credential "token expired". For fresh lines restart the demo; for one token, use the "More tokens" line at the end.`);
  out('');
  for (const e of await examples(rules, privateJwk, now)) {
    out(`# ${e.title}  -> expect ${e.expect} ${e.reason}`);
    out(e.curl);
    out('');
  }
  out(`More tokens: npx driftguard token --key ${file} --sub spiffe://demo.local/ns/billing/sa/invoice-agent --scope 'accounts.read payments.write' --contract 2026-09 --ttl ${DEMO_TOKEN_SECONDS / 60}m`);
  out('Press Ctrl-C to stop.');
  return async () => {
    await dg.close();
    await new Promise((r) => jwks.close(r));
    await new Promise((r) => api.close(r));
  };
}
