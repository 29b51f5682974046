// Each kind of malformed rules file stops loading with a problem that names the file, the
// line and the field. Assertions are on line numbers and field names, never on wording.

import t from 'tap';
import { writeFileSync } from 'node:fs';
import { parse } from 'yaml';
import { writeRules } from '../support/driftguard.ts';
import { loadRules, RulesError, type RulesProblem } from '../../proxy/rules/load.ts';
import { matchEach } from '../support/lists.ts';

// Line numbers below refer to this text (line 1 is "proxy:").
const VALID = `proxy:
  listen: 127.0.0.1:0
  upstream: http://127.0.0.1:9
  admin: 127.0.0.1:0
  mode: enforce
identity:
  issuers:
    - issuer: https://issuer.test.local
      audiences: [api]
      algorithms: [ES256]
      jwks: { url: "http://127.0.0.1:9/jwks.json" }
  clockSkew: 30s
consumers:
  registry:
    - subject: spiffe://test/agent
      kind: automation
      owner: team-a
contract:
  versions: ["2026-01", "2026-06"]
  operations:
    - id: getItem
      method: GET
      path: /items/{id}
      sensitivity: low
    - id: createItem
      method: POST
      path: /items
      sensitivity: high
      changedIn: "2026-06"
`;

/** A deprecated block for the second operation, its link on line 32. */
const DEPRECATED = (link: string) => `      deprecated:\n        since: "2026-01-01"\n        link: '${link}'\n`;

function problems(text: string): { file: string; problems: readonly RulesProblem[] } {
  const file = writeRules(text);
  try {
    loadRules(file);
  } catch (err) {
    if (err instanceof RulesError) return { file, problems: err.problems };
    throw err;
  }
  return { file, problems: [] };
}

/** Replace `from` (which must occur) in VALID. */
function edit(from: string, to: string): string {
  if (!VALID.includes(from)) throw new Error(`${from} not in VALID`);
  return VALID.replace(from, to);
}

t.test('the baseline is valid', async (t) => {
  t.same(problems(VALID).problems, []);
  t.same(problems(edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n${DEPRECATED('https://docs.example/changes/%E2%82%ACuro?v=2&x=(1)#section-3')}`)).problems, [], 'and so is a percent-encoded link');
  // Templates that overlap where one is more specific at every place (every router runs it),
  // or that a variable cannot take the other's empty last segment, are taken.
  const second = (method: string, path: string) => edit('      method: POST\n      path: /items\n', `      method: ${method}\n      path: ${path}\n`);
  for (const [method, path] of [['GET', '/items/export'], ['HEAD', '/items/export'], ['GET', '/{collection}/'], ['POST', '/{collection}/export'], ['GET', '/items/{id}:export'], ['GET', '/items/a:export']]) {
    t.same(problems(second(method!, path!)).problems, [], `${method} ${path} beside GET /items/{id}`);
  }
});

const cases: { name: string; text: string; line: number | number[]; field: string | RegExp; message?: RegExp }[] = [
  { name: 'unknown field', text: edit('  mode: enforce\n', '  mode: enforce\n  listne: 1\n'), line: 6, field: 'proxy.listne' },
  { name: 'unknown field in an operation', text: edit('      sensitivity: low\n', '      sensitivity: low\n      scope: [a]\n'), line: 25, field: 'contract.operations[0].scope' },
  { name: 'wrong enum (mode)', text: edit('mode: enforce', 'mode: enforcing'), line: 5, field: 'proxy.mode' },
  { name: 'wrong enum (sensitivity)', text: edit('sensitivity: high', 'sensitivity: severe'), line: 28, field: 'contract.operations[1].sensitivity' },
  { name: 'wrong enum (algorithm HS256)', text: edit('algorithms: [ES256]', 'algorithms: [HS256]'), line: 10, field: /^identity\.issuers\[0\]\.algorithms(\[0\])?$/ },
  { name: 'missing required field (upstream)', text: edit('  upstream: http://127.0.0.1:9\n', ''), line: 1, field: 'proxy.upstream' },
  { name: 'missing required field (sensitivity)', text: edit('      sensitivity: low\n', ''), line: 21, field: 'contract.operations[0].sensitivity' },
  { name: 'missing required field (algorithms)', text: edit('      algorithms: [ES256]\n', ''), line: 8, field: 'identity.issuers[0].algorithms' },
  // What a duration is, not the schema's regular expression.
  { name: 'bad duration', text: edit('clockSkew: 30s', 'clockSkew: 30 seconds'), line: 12, field: 'identity.clockSkew', message: /^"30 seconds" is not valid: A duration: 500ms, 30s/ },
  { name: 'clock skew not in whole seconds', text: edit('clockSkew: 30s', 'clockSkew: 1500ms'), line: 12, field: 'identity.clockSkew', message: /^1500ms is not a whole number of seconds, as the times in a token are: write 1s or 2s$/ },
  // Inside jwks (a oneOf), the field itself, not "must be exactly one of" the three shapes.
  { name: 'bad duration (jwks cooldown)', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", cooldown: soon }'), line: 11, field: 'identity.issuers[0].jwks.cooldown', message: /^"soon" is not valid: A duration/ },
  { name: 'a misspelt field inside jwks', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", refesh: 5m }'), line: 11, field: 'identity.issuers[0].jwks.refesh', message: /^unknown field "refesh"$/ },
  { name: 'changedIn not a version', text: edit('changedIn: "2026-06"', 'changedIn: "2026-07"'), line: 29, field: 'contract.operations[1].changedIn' },
  { name: 'duplicate operation id', text: edit('    - id: createItem', '    - id: getItem'), line: 25, field: 'contract.operations[1].id' },
  { name: 'ambiguous path templates', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /items/{other}\n'), line: 27, field: 'contract.operations[1].path' },
  { name: 'automation consumer without owner', text: edit('      owner: team-a\n', ''), line: 15, field: 'consumers.registry[0].owner' },
  { name: 'jwks with both file and url', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", file: ./jwks.json }'), line: 11, field: 'identity.issuers[0].jwks' },
  // An unclosed bracket is noticed where the next key starts: that line or the one before is fine.
  { name: 'YAML syntax error (unclosed flow sequence)', text: edit('  versions: ["2026-01", "2026-06"]', '  versions: ["2026-01", "2026-06"'), line: [19, 20], field: 'near contract.versions' },
  { name: 'YAML syntax error (nested mapping in a scalar)', text: edit('mode: enforce', 'mode: enforce: audit'), line: 5, field: 'near proxy' },
  { name: 'YAML syntax error (tab indentation)', text: edit('  clockSkew: 30s', '\tclockSkew: 30s'), line: 12, field: 'near identity.issuers[0]' },
  // A list item's line indented one space short: it was "(top level)".
  { name: 'YAML syntax error (an item\'s line indented short)', text: edit('      owner: team-a\n', '     owner: team-a\n'), line: 17, field: /^near consumers\.registry(\[0\])?$/ },
  { name: 'YAML duplicate key', text: edit('  mode: enforce\n', '  mode: enforce\n  mode: audit\n'), line: 6, field: 'proxy.mode', message: /^written twice in the same mapping/ },
  { name: 'YAML duplicate key in a list item', text: edit('      path: /items/{id}\n', '      path: /items/{id}\n      path: /other/{id}\n'), line: 24, field: 'contract.operations[0].path', message: /^written twice/ },
  // A scope-token (RFC 6749 §3.3) has no space: a `scope` claim could never carry "a b".
  { name: 'scope with a space', text: edit('      sensitivity: low\n', '      sensitivity: low\n      scopes: ["items.read items.write"]\n'), line: 25, field: 'contract.operations[0].scopes[0]', message: /scope-token of RFC 6749/ },
  // 0s: every token with an unknown kid fetches the keys.
  { name: 'jwks cooldown under 1s', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", cooldown: 500ms }'), line: 11, field: 'identity.issuers[0].jwks.cooldown', message: /^500ms is less than 1s: tokens naming unknown key ids/ },
  { name: 'jwks cooldown of 0s', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", cooldown: 0s }'), line: 11, field: 'identity.issuers[0].jwks.cooldown', message: /must be at least 1ms/ },
  { name: 'clock skew over 5m', text: edit('  clockSkew: 30s', '  clockSkew: 2d'), line: 12, field: 'identity.clockSkew', message: /more than 5m/ },
  // Metric labels: "a\u0001b" joined as two series' key, a lone surrogate printed as U+FFFD, made two consumers one series.
  { name: 'subject with a control character', text: edit('subject: spiffe://test/agent', 'subject: "spiffe://test/agent\\u0001x"'), line: 15, field: 'consumers.registry[0].subject', message: /No control character/ },
  { name: 'owner with a C1 control character (a terminal escape)', text: edit('owner: team-a', 'owner: "team-\\u009b31m"'), line: 17, field: 'consumers.registry[0].owner', message: /No control character/ },
  { name: 'owner with an unpaired surrogate', text: edit('owner: team-a', 'owner: "team-\\ud800"'), line: 17, field: 'consumers.registry[0].owner', message: /unpaired surrogate/ },
  // Added to the time of day, past the largest date JavaScript holds: every later use a 500.
  // toJS threw a ReferenceError: a stack trace into the yaml package, no line, no field.
  { name: 'YAML alias whose anchor is not set before it', text: edit('  mode: enforce\n', '  mode: enforce\n  connections: *nope\n'), line: 6, field: 'proxy.connections', message: /^YAML: Unresolved alias/ },
  { name: 'YAML aliases that expand too far', text: 'a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n' + VALID, line: 2, field: /^(b|b\[0\])$/, message: /^YAML: Excessive alias count/ },
  // YAML reads these keys as a boolean and a number; they were named at line 1.
  { name: 'unknown key that YAML reads as a boolean', text: VALID + 'true: 1\n', line: 30, field: 'true' },
  { name: 'unknown key that YAML reads as a number', text: edit('  mode: enforce\n', '  mode: enforce\n  8080: x\n'), line: 6, field: 'proxy.8080' },
  { name: 'token lifetime past any date', text: edit('  clockSkew: 30s', '  clockSkew: 30s\n  maxTokenLifetime: { automation: 100000000d }'), line: 13, field: 'identity.maxTokenLifetime.automation', message: /^must be at most 36500d \(100 years\)/ },
  { name: 'quarantine period past any date', text: VALID + 'monitors:\n  quarantine: { period: P100000000D }\n', line: 31, field: 'monitors.quarantine.period', message: /^must be at most 36500d/ },
  { name: 'token lifetime of 0s', text: edit('  clockSkew: 30s', '  clockSkew: 30s\n  maxTokenLifetime: { automation: 0s }'), line: 13, field: 'identity.maxTokenLifetime.automation', message: /no token could pass/ },
  { name: 'non-canonical literal in a template (dot segment)', text: edit('path: /items/{id}', 'path: /items/../{id}'), line: 23, field: 'contract.operations[0].path' },
  { name: 'non-canonical literal in a template (path parameter)', text: edit('path: /items/{id}', 'path: /items;v=1/{id}'), line: 23, field: 'contract.operations[0].path' },
  { name: 'non-canonical literal in a template (encoded slash)', text: edit('path: /items/{id}', 'path: /a%2Fb/{id}'), line: 23, field: 'contract.operations[0].path' },
  { name: 'non-canonical literal in a template (empty segment)', text: edit('path: /items/{id}', 'path: /items//{id}'), line: 23, field: 'contract.operations[0].path' },
  { name: 'non-canonical literal in a template (encoded where it need not be)', text: edit('path: /items/{id}', 'path: /a%41b/{id}'), line: 23, field: 'contract.operations[0].path', message: /"a%41b" is not a canonical path segment: it percent-encodes a letter, a digit or one of - \. _ ~: write it as it is/ },
  { name: 'non-canonical literal in a template (lowercase hex)', text: edit('path: /items/{id}', 'path: /caf%c3%a9/{id}'), line: 23, field: 'contract.operations[0].path', message: /lowercase hex/ },
  // Sent in headers: a version with a character outside Latin-1 made every request declaring it a 502.
  { name: 'a contract version with a space or a character headers cannot carry', text: edit('  versions: ["2026-01", "2026-06"]', '  versions: ["2026-01", "2026-06", "v2 ✓"]'), line: 19, field: 'contract.versions[2]', message: /is not valid: A contract version: printable ASCII without spaces/ },
  { name: 'minimum not a version', text: edit('  versions: ["2026-01", "2026-06"]\n', '  versions: ["2026-01", "2026-06"]\n  minimum: "2025-01"\n'), line: 20, field: 'contract.minimum' },
  { name: 'declared operation that does not exist', text: edit('      owner: team-a\n', '      owner: team-a\n      operations: [getItem, nope]\n'), line: 18, field: 'consumers.registry[0].operations[1]' },
  { name: 'upstream with a path', text: edit('upstream: http://127.0.0.1:9', 'upstream: http://127.0.0.1:9/api'), line: 3, field: 'proxy.upstream' },
  // A password without a user name is a credential too; and a URL that does not parse is not quoted: it may carry one.
  { name: 'upstream with a password only', text: edit('upstream: http://127.0.0.1:9', 'upstream: "http://:PWSECRET@127.0.0.1:9"'), line: 3, field: 'proxy.upstream', message: /^must be an origin only/ },
  { name: 'upstream that is not a URL', text: edit('upstream: http://127.0.0.1:9', 'upstream: "http://ops:PWSECRET@127.0.0.1:99999/?token=QSECRET"'), line: 3, field: 'proxy.upstream', message: /^is not a URL$/ },
  // Read as YAML 1.1 before: merge keys applied past their refusal, `yes` a boolean, 4:16 the number 256.
  { name: 'a %YAML 1.1 directive', text: '%YAML 1.1\n---\n' + edit('upstream: http://127.0.0.1:9', 'upstream: http://127.0.0.1:9\n  clientConnections: 4:16'), line: 1, field: '', message: /^a %YAML 1\.1 directive: the rules are read as YAML 1\.2 only/ },
  // Taken before: every token then refused as identity-unavailable, for good.
  { name: 'key set URL that is not a URL', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://ops:PWSECRET@127.0.0.1:99999/jwks.json" }'), line: 11, field: 'identity.issuers[0].jwks.url', message: /^is not a URL$/ },
  { name: 'discovery URL that is not a URL', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { discovery: "https://issuer example.com" }'), line: 11, field: 'identity.issuers[0].jwks.discovery', message: /^is not a URL$/ },
  { name: 'revocation list URL that is not a URL', text: VALID + 'revocation:\n  url: "https://ops:PWSECRET@lists.example:99999/r?token=QSECRET"\n', line: 31, field: 'revocation.url', message: /^is not a URL$/ },
  { name: 'idempotency key header that is the credential', text: VALID + 'monitors:\n  idempotency: { header: Authorization }\n', line: 31, field: 'monitors.idempotency.header', message: /has a meaning of its own/ },
  { name: 'idempotency key header that is the contract version\'s', text: VALID + 'monitors:\n  idempotency: { header: contract-version }\n', line: 31, field: 'monitors.idempotency.header', message: /has a meaning of its own/ },
  { name: 'revocation list over plain http to a host that is not loopback', text: VALID + 'revocation:\n  url: "http://lists.example/r.json"\n', line: 31, field: 'revocation.url', message: /plain http to a host that is not loopback/ },
  // Callers would be told to move to an operation that is going too, or gone (410).
  { name: 'replacement that is deprecated itself, with a sunset', text: edit('      sensitivity: low\n', '      sensitivity: low\n      deprecated: { since: "2026-01-01", sunset: "2027-01-01" }\n').replace('changedIn: "2026-06"\n', 'changedIn: "2026-06"\n      deprecated: { since: "2026-01-01", replacement: getItem }\n'), line: 31, field: 'contract.operations[1].deprecated.replacement', message: /"getItem" is deprecated itself/ },
  // Authorization there made every token with a contract claim a conflict.
  { name: 'contract header with a meaning of its own', text: edit('  versions: ["2026-01", "2026-06"]\n', '  versions: ["2026-01", "2026-06"]\n  declared: { header: Authorization }\n'), line: 20, field: 'contract.declared.header', message: /Authorization has a meaning of its own/ },
  { name: 'contract header that an ingress sets', text: edit('  versions: ["2026-01", "2026-06"]\n', '  versions: ["2026-01", "2026-06"]\n  declared: { header: X-Forwarded-Port }\n'), line: 20, field: 'contract.declared.header' },
  { name: 'contract header named like driftguard\'s own', text: edit('  versions: ["2026-01", "2026-06"]\n', '  versions: ["2026-01", "2026-06"]\n  declared: { header: Driftguard-Contract }\n'), line: 20, field: 'contract.declared.header' },
  // `check` said valid; `run` failed with EADDRINUSE.
  // Written otherwise, the same address: check passed them, and run stopped on EADDRINUSE.
  { name: 'admin on the traffic listener\'s port, 127.1 for 127.0.0.1', text: edit('listen: 127.0.0.1:0', 'listen: 127.1:18080').replace('admin: 127.0.0.1:0', 'admin: 127.0.0.1:18080'), line: 4, field: 'proxy.admin', message: /must differ from proxy\.listen: both listen on port 18080/ },
  { name: 'admin on the traffic listener\'s port, an IPv4-mapped address in hex', text: edit('listen: 127.0.0.1:0', 'listen: "[::ffff:7f00:1]:18080"').replace('admin: 127.0.0.1:0', 'admin: 127.0.0.1:18080'), line: 4, field: 'proxy.admin', message: /must differ from proxy\.listen: both listen on port 18080/ },
  { name: 'admin on the traffic listener\'s port, 0 for 0.0.0.0', text: edit('listen: 127.0.0.1:0', 'listen: "0:18080"').replace('admin: 127.0.0.1:0', 'admin: 127.0.0.1:18080'), line: 4, field: 'proxy.admin', message: /must differ from proxy\.listen: both listen on port 18080/ },
  { name: 'admin on the traffic listener\'s port', text: edit('listen: 127.0.0.1:0', 'listen: 0.0.0.0:18080').replace('admin: 127.0.0.1:0', 'admin: 127.0.0.1:18080'), line: 4, field: 'proxy.admin', message: /must differ from proxy\.listen: both listen on port 18080/ },
  { name: 'a public operation with scopes (never checked)', text: edit('      sensitivity: low\n', '      sensitivity: low\n      public: true\n      scopes: [items.read]\n'), line: 26, field: 'contract.operations[0].scopes', message: /never be checked/ },
  { name: 'two templates that differ only by a trailing slash', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /items/{other}/\n'), line: 27, field: 'contract.operations[1].path', message: /differs only by a trailing \/ from contract\.operations\[0\]'s path: an upstream that ignores trailing slashes/ },
  { name: 'two templates that differ only in case', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /Items/{other}\n'), line: 27, field: 'contract.operations[1].path', message: /differs only in case or percent-encoding from contract\.operations\[0\]/ },
  // HEAD is decided among HEAD and GET together, and routers serve HEAD from GET routes: weighed as one method.
  { name: 'a HEAD and a GET template that differ only in case', text: edit('      method: POST\n      path: /items\n', '      method: HEAD\n      path: /Items/{other}\n'), line: 27, field: 'contract.operations[1].path', message: /differs only in case or percent-encoding from contract\.operations\[0\]/ },
  { name: 'a HEAD and a GET literal of one fold at one place', text: edit('      method: POST\n      path: /items\n', '      method: HEAD\n      path: /Items/view\n'), line: 27, field: 'contract.operations[1].path', message: /its segment "Items" differs only in case or percent-encoding from "items" of contract\.operations\[0\] at the same place/ },
  { name: 'two literals of one fold at one place (case)', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /Items/view\n'), line: 27, field: 'contract.operations[1].path', message: /its segment "Items" differs only in case or percent-encoding from "items" of contract\.operations\[0\] at the same place/ },
  { name: 'two literals of one fold at one place (encoding)', text: edit('path: /items/{id}', 'path: /p/a:b/{id}').replace('      method: POST\n      path: /items\n', '      method: GET\n      path: /p/a%3Ab/view\n'), line: 27, field: 'contract.operations[1].path', message: /its segment "a%3Ab" differs only in case or percent-encoding from "a:b"/ },
  { name: 'two templates that are one path decoded', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /it%40ems/{other}\n').replace('path: /items/{id}', 'path: /it@ems/{id}'), line: 27, field: 'contract.operations[1].path', message: /differs only in case or percent-encoding from contract\.operations\[0\]'s path: an upstream that ignores case or decodes/ },
  // driftguard decides /items/export as getItem (the first literal from the left); Spring and
  // JAX-RS (by their literals) and Express (by declaration order) may run the other.
  { name: 'two templates that cross (each more specific at one place)', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /{collection}/export\n'), line: 27, field: 'contract.operations[1].path', message: /GET \/\{collection\}\/export and contract\.operations\[0\] \(GET \/items\/\{id\}\) both match \/items\/export, and neither is the more specific/ },
  { name: 'a literal that crosses a custom method', text: edit('      method: POST\n      path: /items\n', '      method: GET\n      path: /{collection}/1:export\n').replace('path: /items/{id}', 'path: /items/{id}:export'), line: 27, field: 'contract.operations[1].path', message: /both match \/items\/1:export, and neither is the more specific/ },
  // A HEAD request is decided among HEAD and GET operations together.
  { name: 'a HEAD template that crosses a GET one', text: edit('      method: POST\n      path: /items\n', '      method: HEAD\n      path: /{collection}/export\n'), line: 27, field: 'contract.operations[1].path', message: /both match HEAD \/items\/export, and neither is the more specific/ },
  { name: 'listen not host:port', text: edit('listen: 127.0.0.1:0', 'listen: localhost'), line: 2, field: 'proxy.listen' },
  // A deprecation link goes into a Link header as <…>: it must not end it early, nor carry a
  // character Node refuses to write (which made every answer for the operation fail).
  { name: 'deprecation link that would end <…> early', text: edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n${DEPRECATED('https://docs.example/a>,<https://evil.example/>')}`), line: 32, field: 'contract.operations[1].deprecated.link' },
  { name: 'deprecation link with a character outside RFC 3986', text: edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n${DEPRECATED('https://docs.example/€uro')}`), line: 32, field: 'contract.operations[1].deprecated.link' },
  // A duration that becomes a timer is refused above 2^31 - 1 ms: Node would fire it after 1 ms,
  // refreshing keys every millisecond or timing out every upstream call at once.
  { name: 'jwks refresh longer than a timer can wait', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", refresh: 25d }'), line: 11, field: 'identity.issuers[0].jwks.refresh' },
  { name: 'upstream response timeout longer than a timer can wait', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts: { response: 25d }\n'), line: 6, field: 'proxy.timeouts.response' },
  { name: 'tunnel idle timeout longer than a timer can wait', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts:\n    tunnelIdle: P30D\n'), line: 7, field: 'proxy.timeouts.tunnelIdle' },
  // 0 turns an upstream timeout off (a hung upstream holds its connection for good) or refetches keys every millisecond.
  { name: 'upstream connect timeout of 0s', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts: { connect: 0s }\n'), line: 6, field: 'proxy.timeouts.connect', message: /must be at least 1ms/ },
  { name: 'upstream response timeout that rounds to 0', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts: { response: 0.4ms }\n'), line: 6, field: 'proxy.timeouts.response', message: /0\.4ms rounds to 0ms: write at least 1ms$/ },
  { name: 'jwks refresh under a second', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", refresh: 1ms }'), line: 11, field: 'identity.issuers[0].jwks.refresh', message: /^1ms is less than 1s: every pod would fetch the keys that often/ },
  { name: 'a per-sensitivity token lifetime under a second', text: edit('  clockSkew: 30s', '  clockSkew: 30s\ncredentials:\n  maxTokenLifetime: { critical: 500ms }'), line: 14, field: 'credentials.maxTokenLifetime.critical', message: /^500ms is less than 1s, the unit of the times in a token/ },
  { name: 'jwks refresh of 0s', text: edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', 'jwks: { url: "http://127.0.0.1:9/jwks.json", refresh: 0s }'), line: 11, field: 'identity.issuers[0].jwks.refresh', message: /must be at least 1ms/ },
  // Where 0s means no limit, a value that rounds to 0 would silently mean no limit too.
  { name: 'request timeout that rounds to 0 (no limit)', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts: { request: 0.2ms }\n'), line: 6, field: 'proxy.timeouts.request', message: /rounds to 0ms: write at least 1ms, or 0s for no limit/ },
  { name: 'client idle timeout not longer than the response timeout', text: edit('  mode: enforce\n', '  mode: enforce\n  timeouts: { response: 30s, clientIdle: 30s }\n'), line: 6, field: 'proxy.timeouts.clientIdle' },
  // Times are ISO 8601 only and must exist: Date.parse rolled 2026-02-30 over to March 2.
  { name: 'deprecation since a day that does not exist', text: edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n${DEPRECATED('https://docs.example/x').replace('2026-01-01', '2026-02-30')}`), line: 31, field: 'contract.operations[1].deprecated.since' },
  { name: 'deprecation since at hour 24', text: edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n${DEPRECATED('https://docs.example/x').replace('2026-01-01', '2026-01-01T24:00:00Z')}`), line: 31, field: 'contract.operations[1].deprecated.since' },
  { name: 'revocation interval longer than a timer can wait', text: VALID + 'revocation:\n  interval: 25d\n', line: 31, field: 'revocation.interval' },
  { name: 'body timeout longer than a timer can wait', text: VALID + 'monitors:\n  bodyTimeout: 600h\n', line: 31, field: 'monitors.bodyTimeout' },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    const { file, problems: found } = problems(c.text);
    t.ok(found.length > 0, 'refused');
    const lines = Array.isArray(c.line) ? c.line : [c.line];
    const hit = found.find((p) => (typeof c.field === 'string' ? p.field === c.field : c.field.test(p.field)));
    t.ok(hit, `a problem names the field ${c.field} (got ${found.map((p) => `${p.line}:${p.field}`).join(', ')})`);
    t.ok(lines.includes(hit?.line ?? -1), `on line ${lines.join(' or ')} (got ${hit?.line})`);
    if (c.message) t.match(hit?.message, c.message, 'saying why');
    t.notMatch(JSON.stringify(found), /SECRET/, 'no credential quoted');
    const line = hit?.line;
    t.equal(hit?.file, file, 'in the right file');
    t.ok(hit!.column >= 1, 'with a column');
    const err = (() => { try { loadRules(file); } catch (e) { return e as Error; } return undefined; })();
    t.match(err?.message, `${file}:${line}:`, 'the message starts with file:line');
  });
}

t.test('deprecation instants are kept to the whole second, as the headers say them', async (t) => {
  const rules = loadRules(writeRules(edit('changedIn: "2026-06"\n', `changedIn: "2026-06"\n      deprecated:\n        since: "2026-01-01T00:00:00.500Z"\n        sunset: "2031-01-01T00:00:00.999Z"\n`)));
  const d = rules.contract.operations.find((o) => o.deprecated)!.deprecated!;
  // Before: enforced from .500, while Deprecation said @1767225600 (the whole second).
  t.equal(d.sinceMs, Date.UTC(2026, 0, 1));
  t.equal(d.sunsetMs, Date.UTC(2031, 0, 1));
});

t.test('every problem of a file is reported at once', async (t) => {
  const text = edit('mode: enforce', 'mode: enforcing').replace('sensitivity: high', 'sensitivity: severe').replace('clockSkew: 30s', 'clockSkew: soon');
  const { problems: found } = problems(text);
  t.same(found.map((p) => p.field).sort(), ['contract.operations[1].sensitivity', 'identity.clockSkew', 'proxy.mode']);
});

t.test('a proxy that is not a mapping is one problem at its line, with the DRIFTGUARD_* overrides the injector always sets too', async (t) => {
  const lines = VALID.split('\n');
  const text = ['proxy: oops', ...lines.slice(5)].join('\n');
  for (const overrides of [{}, { listen: '127.0.0.1:18080' }, { listen: '127.0.0.1:18080', upstream: 'http://127.0.0.1:9', admin: '127.0.0.1:0' }]) {
    const file = writeRules(text);
    // Before: a TypeError (cannot create property 'listen' on string 'oops') with no file, line or field.
    const err = t.throws(() => loadRules(file, overrides)) as RulesError;
    t.ok(err instanceof RulesError, `${Object.keys(overrides).join(', ') || 'no overrides'}: a rules problem`);
    matchEach(t, err.problems, [{ file, line: 1, field: 'proxy' }]);
  }
});

t.test('a table bound past what the process can set aside, or not finite, is a problem at its field, not an out-of-memory crash', async (t) => {
  // lru-cache sets aside every slot when built: 5,000,000 cache slots were valid and killed the
  // sidecar under the chart's heap at start or at a reload; .inf passed ajv's integer check and
  // crashed the start with a stack trace.
  for (const [what, text, field] of [
    ['token cache slots', VALID.replace('  clockSkew: 30s', '  clockSkew: 30s\n  cache: { maxEntries: 5000000 }'), 'identity.cache.maxEntries'],
    ['token cache slots .inf', VALID.replace('  clockSkew: 30s', '  clockSkew: 30s\n  cache: { maxEntries: .inf }'), 'identity.cache.maxEntries'],
    ['token cache bytes .inf', VALID.replace('  clockSkew: 30s', '  clockSkew: 30s\n  cache: { maxBytes: .inf }'), 'identity.cache.maxBytes'],
    ['fingerprints', VALID + 'monitors:\n  retryStorm: { maxFingerprints: 5000000 }\n', 'monitors.retryStorm.maxFingerprints'],
  ] as const) {
    const found = problems(text).problems;
    t.same(found.map((p) => p.field), [field], `${what}: one problem, at its field`);
    t.ok(found.every((p) => p.line > 1), `${what}: at its line`);
  }
});

t.test('a revocation list over plain http: to loopback, or with insecureHttp where the path is protected', async (t) => {
  t.same(problems(VALID + 'revocation:\n  url: "http://127.0.0.1:9/r.json"\n').problems, [], 'loopback');
  t.same(problems(VALID + 'revocation:\n  url: "http://lists.example/r.json"\n  insecureHttp: true\n').problems, [], 'insecureHttp: true');
});

t.test('a field named like an Object.prototype member is an unknown field at its line, in the rules file', async (t) => {
  for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    const { file, problems: found } = problems(VALID + `${name}: 1\n`);
    // Before: `function Object() { [native code] }: constructor: unknown field`, no line.
    matchEach(t, found, [{ file, line: 30, field: name }], name);
  }
});

t.test('YAML the loader does not read as written: an unknown tag, a second document, a merge key; each one problem at its line', async (t) => {
  // Before: `owner: !env TEAM` loaded as the text "TEAM" and the file was valid; a trailing
  // `---` told the operator to call YAML.parseAllDocuments(); `<<: *a` was three problems
  // about missing fields and a field named "<<".
  const tag = problems(edit('owner: team-a', 'owner: !env TEAM_OWNER'));
  matchEach(t, tag.problems, [{ line: 17, field: 'consumers.registry[0].owner', message: /Unresolved tag: !env.*does not expand tags/ }]);
  const second = problems(VALID + '---\n');
  matchEach(t, second.problems, [{ line: 30, field: '', message: /second document/ }]);
  const merged = problems(edit('  registry:\n    - subject: spiffe://test/agent\n      kind: automation\n      owner: team-a\n', '  registry:\n    - &a { subject: spiffe://test/agent, kind: automation, owner: team-a }\n    - { <<: *a, subject: spiffe://test/bot }\n'));
  t.equal(merged.problems.length, 1, 'one problem');
  matchEach(t, merged.problems, [{ line: 16, field: 'consumers.registry[1].<<', message: /merge keys/ }]);
});

t.test('a key that is no word (a list, a mapping, an alias, null) is named at its own line, and no warning is printed', async (t) => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => { warnings.push(w.message); };
  process.on('warning', onWarning);
  t.teardown(() => { process.off('warning', onWarning); });
  for (const [what, key] of [['a list', '? [a]\n  : 1'], ['a mapping', '? {x: 1}\n  : 1'], ['null', '~: 30s'], ['an alias', '*k : 1']] as const) {
    const text = edit('  clockSkew: 30s', `  clockSkew: &k 30s\n  ${key}`);
    const line = text.split('\n').findIndex((l) => l.startsWith(`  ${key.split('\n')[0]}`)) + 1;
    const { problems: found } = problems(text);
    matchEach(t, found, [{ line, field: 'identity', message: 'a key must be a word: not a list, a mapping, an alias or null' }], `${what}: at line ${line} (it was the parent's, identity:)`);
  }
  await new Promise((r) => setImmediate(r));
  t.same(warnings, [], 'the yaml package printed nothing of its own (it warned of collection keys)');
});

t.test('a file that is not UTF-8 is refused at its first bad byte, not loaded with U+FFFD in it', async (t) => {
  const file = writeRules('');
  writeFileSync(file, Buffer.concat([Buffer.from(VALID.replace('owner: team-a', 'owner: Jos'), 'utf8').subarray(0, VALID.indexOf('owner: team-a') + 'owner: Jos'.length), Buffer.from([0xe9]), Buffer.from(VALID.slice(VALID.indexOf('owner: team-a') + 'owner: team-a'.length))]));
  const err = t.throws(() => loadRules(file)) as RulesError;
  t.same(err.problems.map((p) => [p.line, p.column, p.message]), [[17, 17, 'not UTF-8: save the rules file as UTF-8']]);
});

t.test('a replacement whose deprecation is only announced (no sunset, no replacement of its own) is where callers go for now', async (t) => {
  const chain = (next: string) => edit('      sensitivity: low\n', `      sensitivity: low\n      deprecated: { ${next} }\n`).replace('changedIn: "2026-06"\n', 'changedIn: "2026-06"\n      deprecated: { since: "2026-01-01", replacement: getItem }\n');
  t.same(problems(chain('since: "2030-01-01"')).problems, [], 'announced');
  // Each names the other, which names a replacement of its own: both refused.
  t.same(problems(chain('since: "2030-01-01", replacement: createItem')).problems.map((p) => p.field).sort(), ['contract.operations[0].deprecated.replacement', 'contract.operations[1].deprecated.replacement'], 'a chain');
});

t.test('anchors shared by a long registry load', async (t) => {
  // The yaml package's default alias limit (100) refused 150 entries sharing two anchors.
  const entries = Array.from({ length: 300 }, (_, i) => `    - { subject: "spiffe://test/a${i}", kind: automation, owner: *team, operations: *ops }`).join('\n');
  const text = VALID.replace('      owner: team-a\n', '      owner: &team team-a\n      operations: &ops [getItem]\n').replace('\ncontract:', `\n${entries}\ncontract:`);
  t.same(problems(text).problems, []);
});

t.test('a duration past 100 years is one problem at its field, a timer\'s as a timer\'s', async (t) => {
  const found = problems(edit('  clockSkew: 30s', '  clockSkew: 30s\n  maxTokenLifetime: { human: 36501d }').replace('  mode: enforce\n', '  mode: enforce\n  timeouts: { response: 36501d }\n')).problems;
  t.same(found.map((p) => p.field).sort(), ['identity.maxTokenLifetime.human', 'proxy.timeouts.response'], 'one problem each');
  t.match(found.find((p) => p.field === 'identity.maxTokenLifetime.human')?.message, /^must be at most 36500d/);
  t.match(found.find((p) => p.field === 'proxy.timeouts.response')?.message, /^must be at most 24d/);
  t.same(problems(edit('  clockSkew: 30s', '  clockSkew: 30s\n  maxTokenLifetime: { human: 36500d }')).problems, [], '36500d itself is taken');
  const body = problems(VALID + 'monitors:\n  bodyTimeout: 36501d\n').problems;
  t.same(body.map((p) => [p.field, p.message.slice(0, 18)]), [['monitors.bodyTimeout', 'must be at most 24']], 'a lifecycle timer\'s too');
});

t.test('two listeners on one port: refused where they would clash, not where they would not', async (t) => {
  const pair = (listen: string, admin: string) => problems(edit('listen: 127.0.0.1:0', `listen: "${listen}"`).replace('admin: 127.0.0.1:0', `admin: "${admin}"`)).problems.map((p) => p.field);
  for (const [listen, admin] of [['localhost:18080', '127.0.0.1:18080'], ['[0:0:0:0:0:0:0:0]:18080', '127.0.0.1:18080'], ['[::]:18080', '0.0.0.0:18080'], [':18080', '127.0.0.1:18080'], ['[::ffff:127.0.0.1]:18080', '127.0.0.1:18080']]) {
    t.same(pair(listen, admin), ['proxy.admin'], `${listen} and ${admin}`);
  }
  for (const [listen, admin] of [['0.0.0.0:18080', '[::1]:18080'], ['127.0.0.1:18080', '127.0.0.2:18080'], ['0.0.0.0:18080', '0.0.0.0:18081'], ['localhost:18080', '127.0.0.2:18080'], ['[::1]:18080', 'localhost:18080']]) {
    t.same(pair(listen, admin), [], `${listen} and ${admin} bind both`);
  }
  // A clash a flag or variable made is blamed on it, not on the file's line for the other.
  const file = writeRules(edit('admin: 127.0.0.1:0', 'admin: "127.0.0.1:18021"'));
  const err = t.throws(() => loadRules(file, { listen: '127.0.0.1:18021', from: { listen: 'DRIFTGUARD_LISTEN' } })) as RulesError;
  matchEach(t, err.problems, [{ file: 'DRIFTGUARD_LISTEN', field: 'proxy.listen', message: /must differ from proxy\.admin: both listen on port 18021/ }]);
});

t.test('an unreadable file names the file', async (t) => {
  t.throws(() => loadRules('/nonexistent/rules.yaml'), { code: 'ERR_RULES_INVALID', message: /\/nonexistent\/rules\.yaml/ });
});

t.test('the demo rules are valid', async (t) => {
  const rules = loadRules(new URL('../../rules/demo.yaml', import.meta.url).pathname);
  t.equal(rules.contract.current, '2026-09');
});

t.test('a key set file that is missing, not JSON, or has no key for the algorithms stops loading at its field', async (t) => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { testKey, jwks } = await import('../support/keys.ts');
  const dir = mkdtempSync(join(tmpdir(), 'dg-jwks-'));
  const es = await testKey('ES256');
  const rsa = await testKey('RS256');
  const sets: [string, string | undefined, RegExp][] = [
    ['missing.json', undefined, /cannot read .*missing\.json: ENOENT/],
    ['half.json', '{"keys": [', /is not valid JSON: it ends too soon/],
    // JSON.parse's own message quoted the text around the fault: here a private key's d.
    ['unquoted.json', '{"keys": [{"kty": "EC", "crv": "P-256", "d": jpsQnnGQmLsecret}]}', /^[^]*is not valid JSON(?![^]*jpsQ)/],
    ['lines.json', '{\n  "keys": [\n    {"kty": "EC" "d": "jpsQnnGQmLsecret"}\n  ]\n}', /is not valid JSON at line 3 column 18(?![^]*jpsQ)/],
    ['empty.json', '{"keys": []}', /has no key that can verify ES256 \(0 keys/],
    ['hollow.json', '{"keys": [{"kty": "EC"}]}', /has no key that can verify ES256/],
    ['other.json', JSON.stringify(jwks(rsa)), /has no key that can verify ES256/],
    // A private key published as a verification key: anybody who reads the file can sign.
    ['private.json', JSON.stringify({ keys: [es.privateJwk] }), /holds private key material \(key "es256-[^"]+": d\): publish only public keys, and treat that key as leaked/],
    ['secret.json', JSON.stringify({ keys: [es.publicJwk, { kty: 'oct', k: 'c2VjcmV0' }] }), /holds private key material \(key without kid: k\)/],
  ];
  for (const [name, text, message] of sets) {
    const file = join(dir, name);
    if (text !== undefined) writeFileSync(file, text);
    const { problems: found } = problems(edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', `jwks: { file: "${file}" }`));
    t.equal(found.length, 1, name);
    t.match(found[0], { line: 11, field: 'identity.issuers[0].jwks.file', message }, name);
  }
  writeFileSync(join(dir, 'good.json'), JSON.stringify(jwks(rsa, es)));
  t.same(problems(edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', `jwks: { file: "${join(dir, 'good.json')}" }`)).problems, [], 'one usable key is enough');
  // Saved by a Windows editor: the key set is whole, only a byte-order mark precedes it.
  writeFileSync(join(dir, 'bom.json'), '\ufeff' + JSON.stringify(jwks(es)));
  t.same(problems(edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', `jwks: { file: "${join(dir, 'bom.json')}" }`)).problems, [], 'a byte-order mark is passed over, as in the rules file and the list');
  // The path pointed at the wrong file: weighed before it is read (a sparse file of 300 MB costs no disk).
  const { openSync, ftruncateSync, closeSync } = await import('node:fs');
  const big = join(dir, 'big.json');
  const fd = openSync(big, 'w');
  ftruncateSync(fd, 300 * 1024 * 1024);
  closeSync(fd);
  const { problems: found } = problems(edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', `jwks: { file: "${big}" }`));
  matchEach(t, found, [{ field: 'identity.issuers[0].jwks.file', message: /big\.json is 307200 KiB: a key set file may be at most 1 MiB/ }], 'a key set file over 1 MiB is refused unread');
});

t.test('inside each issuer\'s jwks, its own field is named, whatever the other issuers\' say', async (t) => {
  // Every issuer's jwks shares one schema path: grouped by it alone, two issuers' errors mixed
  // and both fell back to "must be exactly one of".
  const two = edit('      jwks: { url: "http://127.0.0.1:9/jwks.json" }', `      jwks: { url: "http://127.0.0.1:9/jwks.json", cooldown: soon }
    - issuer: https://other.test.local
      audiences: [api]
      algorithms: [ES256]
      jwks: { discovery: "https://other.test.local", refesh: 5m }`);
  const found = problems(two).problems.map((p) => [p.field, p.message]);
  t.same(found, [
    ['identity.issuers[0].jwks.cooldown', '"soon" is not valid: A duration: 500ms, 30s, 15m, 1h, 2d, or ISO 8601 like PT15M.'],
    ['identity.issuers[1].jwks.refesh', 'unknown field "refesh"'],
  ]);
});

t.test('a value that may carry a credential is not quoted in a problem', async (t) => {
  const text = VALID + 'telemetry:\n  traces:\n    endpoint: "htps://user:s3cr3t@collector:4318"\n';
  const found = problems(text).problems;
  t.equal(found.length, 1);
  t.equal(found[0]!.field, 'telemetry.traces.endpoint');
  t.match(found[0]!.message, /^is not valid: /, 'said invalid, not quoted');
  t.notMatch(JSON.stringify(found), /s3cr3t/);
});

t.test('a problem never prints a key that is no field name: a value the broken YAML read as a key (a URL with its token) stays out', async (t) => {
  const url = 'http://127.0.0.1:9/jwks.json?token=S3CRET-TOKEN';
  const withUrl = edit('jwks: { url: "http://127.0.0.1:9/jwks.json" }', `jwks:\n        url: ${url}`);
  t.same(problems(withUrl).problems, [], 'the rules with the URL are valid');
  const variants = [
    // The line under the URL indented wrong: before, `near identity.issuers[0].jwks.url.http://…?token=S3CRET-TOKEN bad`.
    withUrl.replace(url, `${url}\n         bad: [unclosed`),
    withUrl.replace(url, `${url}: x: y`),
    // Valid YAML, the URL a key: `unknown field "http://…"`.
    withUrl.replace(`url: ${url}`, `url: http://127.0.0.1:9/jwks.json\n        ${url}: 1`),
  ];
  for (const text of variants) {
    const found = problems(text).problems;
    t.ok(found.length > 0, 'refused');
    const printed = JSON.stringify(found);
    t.notOk(printed.includes('S3CRET'), `no token in ${printed}`);
    t.ok(found.every((p) => p.line > 0), 'each at its line');
  }
  const unknown = problems(variants[2]!).problems;
  matchEach(t, unknown, [{ field: 'identity.issuers[0].jwks', message: 'unknown field (a key that is no field name)' }]);
  // Two such keys in one mapping are two problems, each at its line (before: one, the second lost).
  const two = problems(withUrl.replace(`url: ${url}`, `url: http://127.0.0.1:9/jwks.json\n        ${url}: 1\n        ${url}&more: 2`)).problems;
  t.equal(two.length, 2, 'both reported');
  t.not(two[0]?.line, two[1]?.line, 'each at its own line');
});

t.test('a YAML syntax error does not quote the text it is at: a value left after a JSON-form file, an alias, a tag', async (t) => {
  const json = JSON.stringify(parse(VALID), null, 2);
  for (const [what, text] of [
    ['a stray line after a rules file written as JSON', `${json}\nupstreamAuth: Bearer sk-live-0123456789abcdef\n`],
    ['an alias whose anchor is not set before it', VALID.replace('owner: team-a', 'owner: *sk-live-0123456789abcdef')],
    ['a tag that is no word', VALID.replace('owner: team-a', 'owner: !<sk-live-0123456789abcdef> team-a')],
  ] as const) {
    const found = problems(text).problems;
    t.ok(found.length > 0, `${what}: refused`);
    t.ok(found.every((p) => p.line > 0), `${what}: at a line`);
    t.notOk(JSON.stringify(found).includes('sk-live'), `${what}: not quoted (${found.map((p) => p.message).join(' | ')})`);
  }
  // A message that names the `:` indicator, with nothing quoted after it, is kept whole.
  const comma = problems(VALID.replace('owner: team-a', 'owner: ["a" "b"]')).problems;
  t.ok(comma.some((p) => p.message === 'YAML: Missing , or : between flow sequence items'), `kept whole (${comma.map((p) => p.message).join(' | ')})`);
});
