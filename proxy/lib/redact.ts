// What driftguard may say about a URL it fetches (a key set, a revocation list): its query,
// userinfo and path parameters may carry a credential (`?access_token=`, `https://user:pass@`,
// `;sess=`), so logs, metrics, error messages and admin answers name only its origin and its
// path, redacted as a request's is.

/** Origin and path only, without path parameters (`;sess=…` may be a credential too). */
export function redactUrl(url: string): string {
  try { const u = new URL(url); return `${u.origin}${redactPath(u.pathname)}`; } catch { return '(invalid URL)'; }
}

/**
 * Anything shaped like a JWT, replaced: three runs (five for an encrypted one: tokenEnd) of base64url characters (`+` and `=` too, as
 * a careless encoder writes them) joined by single dots, the first from an `eyJ` (a JSON
 * object's encoding) and each as long as a real token's part at least. Anywhere in a
 * segment, not only as a whole one (`/id_token=eyJ…`, `/Bearer%20eyJ…`, `/a<token>`); not a
 * file name that happens to hold `eyJ` (`/static/keyJar.v2.js`). A scan, not a regular
 * expression: one over a path of thousands of `eyJ` started over at each (40 ms a request).
 */
function replaceJwts(s: string): string {
  let at = s.indexOf('eyJ');
  if (at === -1) return s;
  let out = '';
  let copied = 0;
  while (at !== -1) {
    const header = runEnd(s, at);
    const end = header - at >= MIN_HEADER ? tokenEnd(s, header) : -1;
    if (end !== -1) {
      out += s.slice(copied, at) + '(redacted)';
      copied = end;
      at = s.indexOf('eyJ', end);
    } else {
      // The next `eyJ` after this one's header: each character is looked at a bounded number of times.
      at = s.indexOf('eyJ', Math.max(at + 1, header));
    }
  }
  return copied === 0 ? s : out + s.slice(copied);
}

/**
 * Where the token whose header ends at `header` ends, or -1: a JWS (header.payload.signature)
 * or a JWE (RFC 7516 §7.1: header.key.iv.ciphertext.tag, the encrypted key empty under direct
 * encryption, `alg: dir`), whose five parts are replaced whole.
 */
function tokenEnd(s: string, header: number): number {
  if (s.charCodeAt(header) !== DOT) return -1;
  const second = runEnd(s, header + 1);
  if (s.charCodeAt(second) !== DOT) return -1;
  const third = runEnd(s, second + 1);
  const fourth = s.charCodeAt(third) === DOT ? runEnd(s, third + 1) : -1;
  const fifth = fourth > third + 1 && s.charCodeAt(fourth) === DOT ? runEnd(s, fourth + 1) : -1;
  // Each part as long as a real JWE's at least (a 96-bit IV, a 128-bit tag, a key empty or of
  // 128 bits): `monkeyJarWidget.1.2.3.js` is a file name.
  const key = second - header - 1;
  if ((key === 0 || key >= JWE_MIN_KEY) && third - second - 1 >= JWE_MIN_IV && fourth > third + 1 && fifth - fourth - 1 >= JWE_MIN_TAG) return fifth;
  return second - header - 1 >= MIN_PAYLOAD && third - second - 1 >= MIN_SIGNATURE ? third : -1;
}

const DOT = 46;
/** base64url characters of a JWE's shortest IV (96 bits), tag and encrypted key (128 bits). */
const JWE_MIN_IV = 16;
const JWE_MIN_TAG = 22;
const JWE_MIN_KEY = 22;
/**
 * The shortest header, `{"alg":"x"}`, is 15 characters; the shortest payload, `{}`, is `e30`;
 * an unsecured token (`alg: none`) has an empty signature.
 */
const MIN_HEADER = 10;
const MIN_PAYLOAD = 2;
const MIN_SIGNATURE = 0;

/** Where the run of token characters from `i` ends. */
function runEnd(s: string, i: number): number {
  while (i < s.length && isTokenChar(s.charCodeAt(i))) i++;
  return i;
}

function isTokenChar(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 45 || c === 43 || c === 61;
}

/** An encoded `?` and what follows it in its segment: a query smuggled into the path. */
const ENCODED_QUERY = /%3[Ff][^/]*/g;

/**
 * A request path as driftguard's records and answers quote it. A caller may put a credential
 * in the path itself: a token in a segment (/items/eyJ…, /x/id_token=eyJ…), an encoded query
 * (/items/1%3Faccess_token=…), path parameters (/items/1;jsessionid=…), a fragment
 * (/cb#access_token=…), or an absolute-form
 * or authority-form target's userinfo (http://user:pass@host/…, CONNECT user:pass@host:443,
 * //user:pass@host/…, ///user:pass@host/…, /\user:pass@host/…).
 * Those parts are replaced; the rest is kept.
 */
export function redactPath(target: string): string {
  let path = target;
  if (!path.startsWith('/')) {
    // Authority form (CONNECT host:port): the authority without its userinfo, which
    // new URL() took for a scheme and a path (`user:pw@h:443` gave the path `pw@h:443`).
    if (!/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(path)) {
      const authority = path.slice(path.lastIndexOf('@') + 1);
      return /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/.test(authority) ? authority : '(not a path)';
    }
    // Absolute form: its path only, never its userinfo or host.
    try { path = new URL(path).pathname; } catch { return '(not a path)'; }
  } else {
    // A network-path reference (`//user:pw@host/…`, a base URL joined with a scheme-relative
    // one): its first segment is an authority, whose userinfo is replaced. As the WHATWG URL
    // parser reads it (Node's, browsers'): any run of two or more slashes or backslashes
    // before it (`///`, `/\`), the authority ending at the next slash, backslash, ? or #.
    const lead = /^[/\\]{2,}/.exec(path);
    if (lead) {
      const rest = path.slice(lead[0].length);
      const end = rest.search(/[/\\?#]/);
      const at = (end === -1 ? rest : rest.slice(0, end)).lastIndexOf('@');
      if (at !== -1) path = `${lead[0]}(redacted)@${rest.slice(at + 1)}`;
    }
  }
  // A fragment never belongs in a request target (RFC 9112 §3.2), but a client may send one,
  // and OAuth's implicit flow carries its token there (#access_token=…).
  const fragment = path.indexOf('#');
  if (fragment !== -1) path = path.slice(0, fragment) + '#(redacted)';
  // Percent-encoded (`1%3Bjsessionid=…`, a token's dots as `%2E`, `%65yJ…`), as a server that
  // decodes the path reads it: such a segment is replaced whole, first, whatever else it holds.
  if (path.includes('%')) path = path.split('/').map((s) => (s.includes('%') && secretWhenDecoded(s) ? '(redacted)' : s)).join('/');
  const semicolon = path.indexOf(';');
  if (semicolon !== -1) path = path.slice(0, semicolon) + ';(redacted)';
  path = replaceJwts(path);
  if (path.includes('%3')) path = path.replace(ENCODED_QUERY, '%3F(redacted)');
  return path;
}

/** Whether a segment, percent-decoded (up to three times: a double encoding), holds a path parameter, a query, a fragment with a value or a token. */
function secretWhenDecoded(segment: string): boolean {
  // A decoded `#` only with a value after it (`#access_token=…`): `/tags/C%23` is a name.
  return whenDecoded(segment, (s) => s.includes(';') || s.includes('?') || /#[^#]*=/.test(s) || hasJwt(s));
}

/** Whether `text`, percent-decoded once, twice or three times, satisfies `secret`. */
function whenDecoded(text: string, secret: (decoded: string) => boolean): boolean {
  let s = text;
  for (let i = 0; i < 3 && s.includes('%'); i++) {
    const next = s.replace(/%[0-9A-Fa-f]{2}/g, (e) => String.fromCharCode(parseInt(e.slice(1), 16)));
    if (next === s) break;
    s = next;
    if (secret(s)) return true;
  }
  return false;
}

function hasJwt(s: string): boolean {
  return replaceJwts(s) !== s;
}

/**
 * Whether `text` holds a token (JWT-shaped, as the redaction finds one, percent-encoded too):
 * a value driftguard must never store or quote, whatever field it came in.
 */
export function holdsToken(text: string): boolean {
  return redactText(text) !== text;
}

/**
 * Free text a caller sent (a User-Agent, a name in an admin request) as driftguard quotes it:
 * anything shaped like a JWT replaced, and the whole text when it holds one percent-encoded.
 */
export function redactText(text: string): string {
  if (text.includes('%') && whenDecoded(text, hasJwt)) return '(redacted)';
  return replaceJwts(text);
}

/**
 * Where JSON.parse found a fault, without the text V8 quotes around it in its message
 * (`Unexpected token 'j', "…"d":jpsQ…" is not valid JSON`): a key set's private half by
 * mistake, a pod's environment. Node 24 names the line and column for most faults.
 */
export function jsonFault(err: unknown): string {
  const message = err instanceof Error ? err.message : '';
  if (message.startsWith('Unexpected end')) return 'not valid JSON: it ends too soon';
  const at = jsonFaultAt(err);
  const where = at ? ` at line ${at.line} column ${at.column}` : '';
  // What was expected, where V8 says it without quoting the text ("Expected ',' or '}' after
  // property value in JSON at position 9"); a message that quotes is not repeated.
  const said = message.replace(/ in JSON at position \d+.*$/, '');
  return said !== '' && !said.includes('"') ? `not valid JSON${where} (${said})` : `not valid JSON${where}`;
}

/**
 * What the yaml package says of a fault, without the text it quotes: its messages may end with
 * the source at fault (`Unexpected scalar token in YAML stream: "<a line's value>"`, a value
 * left at column 0 of a list; `Unresolved alias …: *<name>`; `Unknown directive %<text>`), and
 * what they print is logged and served on /readyz and GET /revocations. The line and column
 * still say where. The first line only: the rest is the quoted source.
 */
export function yamlFault(message: string, code?: string): string {
  // A tag named as a word (`!env`, `!!python/object`) is what the reader needs to find it.
  if (code === 'TAG_RESOLVE_FAILED') return /^Unresolved tag: !{1,2}[A-Za-z][\w./:-]{0,31}$/.test(message) ? message : 'a tag that is not resolved';
  if (code === 'BAD_DIRECTIVE') return 'a directive that is unknown or unsupported';
  const first = message.split('\n')[0]!;
  // A label's colon (`…in YAML stream: "<source>"`), not the `:` indicator a message names
  // with a space before it (`Missing , or : between flow sequence items`).
  const cut = /[^ ]: /.exec(first);
  return cut === null ? first : first.slice(0, cut.index + 1);
}

/** The line and column JSON.parse names for a fault (Node 24), where it names them. */
export function jsonFaultAt(err: unknown): { line: number; column: number } | undefined {
  const at = /\(line (\d+) column (\d+)\)/.exec(err instanceof Error ? err.message : '');
  return at ? { line: Number(at[1]), column: Number(at[2]) } : undefined;
}
