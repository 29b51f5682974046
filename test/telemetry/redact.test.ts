// What driftguard's records keep of a path or a caller's free text: a token in any spelling
// replaced, an ordinary path kept as sent.

import t from 'tap';
import { redactPath, redactText, redactUrl } from '../../proxy/lib/redact.ts';
import { pathOf } from '../../proxy/telemetry/record.ts';
import type { RequestContext } from '../../proxy/pipeline/types.ts';

const J = 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ';
const ENC = J.replaceAll('.', '%2E');
// As a careless encoder writes one: standard base64, `+` in the payload ({"sub":"a>>>?"}) and `=` padding.
const PLUS = `eyJhbGciOiJub25lIn0.${Buffer.from('{"sub":"a>>>?"}').toString('base64')}.c2lnbmF0dXJl+c2ln==`;

t.test('a token in a path is replaced, in any spelling and wherever it sits in a segment', async (t) => {
  for (const [path, want] of [
    [`/items/${J}`, '/items/(redacted)'],
    [`/x/id_token=${J}`, '/x/id_token=(redacted)'],
    [`/x/a${J}/more`, '/x/a(redacted)/more'],
    [`/x/${PLUS}`, '/x/(redacted)'],
    [`/x/Bearer%20${J}`, '/x/(redacted)'],
    [`/x/${ENC}`, '/x/(redacted)'],
    [`/x/%65${J.slice(1)}`, '/x/(redacted)'],
    // Beside another part already replaced (it was skipped, and the token kept).
    [`/items/${ENC}%3Fx`, '/items/(redacted)'],
    [`/items/${ENC};a`, '/items/(redacted)'],
    ['/items/1%3Bjsessionid=S3CR3T', '/items/(redacted)'],
    ['/items/1;jsessionid=S3CR3T/x', '/items/1;(redacted)'],
    // A fragment (OAuth's implicit flow puts its token there), before or after a `?`.
    ['/cb#access_token=S3CR3T', '/cb#(redacted)'],
    ['/cb#x?access_token=S3CR3T', '/cb#(redacted)'],
    ['/cb/x%23access_token=S3CR3T', '/cb/(redacted)'],
    ['/cb/x%2523access_token=S3CR3T', '/cb/(redacted)'],
    // An unsecured token (alg none: no signature) and one whose payload is `{}`.
    ['/x/eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0./y', '/x/(redacted)/y'],
    ['/x/eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo', '/x/(redacted)'],
  ]) t.equal(redactPath(path), want, path.slice(0, 40));
});

t.test('a token written with `+` and `=` is replaced whole in free text too', async (t) => {
  t.match(PLUS, /\+.*\+.*==$/, 'the token holds a + in its payload and signature, and padding');
  t.equal(redactText(`agent/1 ${PLUS} end`), 'agent/1 (redacted) end');
});

t.test('a target that is not a path: its path, or its authority, never its userinfo', async (t) => {
  for (const [target, want] of [
    // CONNECT's authority form: new URL() read `user:` as a scheme and kept the password as the path.
    ['user:SECRETPW@h:443', 'h:443'],
    ['oauth:ghp_SECRETGITHUBTOKEN@github.com:443', 'github.com:443'],
    ['evil.example.com:8443', 'evil.example.com:8443'],
    ['10.0.0.1:22', '10.0.0.1:22'],
    ['[::1]:443', '[::1]:443'],
    ['http://user:pass@host/a/b', '/a/b'],
    // A network-path reference: its authority's userinfo, as the request's own spelling.
    ['//alice:pw-SECRET@api.example.com/items/1', '//(redacted)@api.example.com/items/1'],
    ['//ghp_SECRETTOKEN@github.com', '//(redacted)@github.com'],
    ['//api.example.com/users/a@b.example', '//api.example.com/users/a@b.example'],
    // Any run of slashes and backslashes before the authority, as the WHATWG URL parser skips them.
    ['///svc:pw-SECRET@api.internal/v1/items', '///(redacted)@api.internal/v1/items'],
    ['/\\svc:pw-SECRET@api.internal/v1/items', '/\\(redacted)@api.internal/v1/items'],
    ['//\\//svc:pw-SECRET@api.internal\\x', '//\\//(redacted)@api.internal\\x'],
    ['//svc:pw-SECRET@api.internal?q=1', '//(redacted)@api.internal?q=1'],
    ['///api.example.com/users/a@b.example', '///api.example.com/users/a@b.example'],
    ['*', '(not a path)'],
    ['user:1234?x@h:443', 'h:443'],
    ['a b:1', '(not a path)'],
  ]) t.equal(redactPath(target), want, target);
  // As a record quotes it: a `?` in an authority-form target is not a query (cut there, the userinfo was left).
  t.equal(pathOf({ req: { url: 'user:1234?x@h:443' } } as unknown as RequestContext), 'h:443');
  t.equal(pathOf({ req: { url: '/items/1?token=x' } } as unknown as RequestContext), '/items/1');
  t.equal(pathOf({ req: { url: '/items/1#access_token=x?y' } } as unknown as RequestContext), '/items/1#(redacted)');
});

t.test('an ordinary path is kept as sent', async (t) => {
  for (const path of ['/tags/C%23', '/a/b%2523c', '/static/keyJar.v2.js', '/a/eyJhbGciOiJub25lIn0.json', '/users/heyJohn.smith.jr', '/a%20b/c%2Fd', '/cursor/eyJwYWdlIjoyfQ', '/cursor/eyJwYWdlIjoyfQ%3D%3D', '/sum/1+2', '/x/100%25']) {
    t.equal(redactPath(path), path, path);
  }
  // Thousands of `eyJ`: a pattern that started over at each took 40 ms a request; the result is the path.
  const many = '/items/' + 'eyJ'.repeat(5_000) + '%20';
  t.equal(redactPath(many), many);
});

t.test('free text and fetched URLs', async (t) => {
  t.equal(redactText(`agent/1.0 ${J} (linux)`), 'agent/1.0 (redacted) (linux)');
  t.equal(redactText(`agent/${ENC}`), '(redacted)', 'percent-encoded: the whole text');
  t.equal(redactText('invoice-agent/3.1'), 'invoice-agent/3.1');
  t.equal(redactUrl('https://user:pw@keys.example/jwks;sess=S3CR3T?token=Q'), 'https://keys.example/jwks;(redacted)');
});

t.test('an encrypted token (JWE, five parts) is replaced whole, its encrypted key empty or not', async (t) => {
  const b64 = (text: string) => Buffer.from(text).toString('base64url');
  const dir = `${b64('{"alg":"dir","enc":"A256GCM","kid":"k1"}')}..${b64('iv-twelve-by')}.${b64('ciphertext '.repeat(12))}.${b64('tag-sixteen-byte')}`;
  const rsa = `${b64('{"alg":"RSA-OAEP-256","enc":"A256GCM"}')}.${b64('encrypted key '.repeat(16))}.${b64('iv-twelve-by')}.${b64('ciphertext '.repeat(12))}.${b64('tag-sixteen-byte')}`;
  for (const [name, jwe] of [['alg dir', dir], ['RSA-OAEP', rsa]] as const) {
    t.equal(redactPath(`/callback/${jwe}/next`), '/callback/(redacted)/next', `${name}: in a path`);
    t.equal(redactText(`agent/1.0 ${jwe} x`), 'agent/1.0 (redacted) x', `${name}: in free text`);
  }
  // Parts shorter than a real JWE's: a versioned file name whose word holds `eyJ` is kept.
  for (const path of ['/static/monkeyJarWidget.1.2.3.js', '/pkg/heyJudeRemaster.1.0.0.tar.gz']) t.equal(redactPath(path), path, `${path} kept`);
  // A header followed by an empty part and no more: no token.
  t.equal(redactText(`${b64('{"alg":"dir","enc":"A256GCM"}')}..x`), `${b64('{"alg":"dir","enc":"A256GCM"}')}..x`);
});
