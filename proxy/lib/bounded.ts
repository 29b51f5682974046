// Bodies driftguard reads whole: documents it fetches for itself (signing keys, discovery,
// revocation lists) from servers that can go wrong, and admin API requests. A body is read
// no further than its limit, whatever its content-length says or leaves out, so that no
// sender can fill the sidecar's memory.

import { request, type Dispatcher } from 'undici';
import { redactUrl } from './redact.ts';

/**
 * Bytes copied into one buffer that doubles as it fills, `max` at most. Kept as the chunks
 * they came in, bytes sent one at a time held a Buffer object each, about 300 bytes of heap a
 * byte (127 admin requests so sent held the chart's whole heap for their 30 s; 60 WebSocket
 * handshakes ran it out).
 */
export class GrowingBuffer {
  readonly #max: number;
  #kept: Buffer;
  #size: number;

  /** `first`: bytes already had, full (the head Node read): never written into. */
  constructor(max: number, first: Buffer = Buffer.alloc(0)) {
    this.#max = max;
    this.#kept = first;
    this.#size = first.length;
  }

  /** Append `chunk`; false, and nothing kept, when that would pass `max`. */
  add(chunk: Uint8Array): boolean {
    const size = this.#size + chunk.byteLength;
    if (size > this.#max) return false;
    if (size > this.#kept.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.#max, Math.max(1024, 2 * size)));
      this.#kept.copy(grown, 0, 0, this.#size);
      this.#kept = grown;
    }
    this.#kept.set(chunk, this.#size);
    this.#size = size;
    return true;
  }

  get bytes(): Buffer { return this.#kept.subarray(0, this.#size); }
}

/** A body as UTF-8 text, or `tooLarge()` thrown once more than `max` bytes have come. */
export async function boundedText(body: AsyncIterable<Uint8Array>, max: number, tooLarge: () => Error): Promise<string> {
  const kept = new GrowingBuffer(max);
  // Leaving the loop by throwing ends the iteration, which destroys (or cancels) the body:
  // the rest is never read.
  for await (const chunk of body) if (!kept.add(chunk)) throw tooLarge();
  return kept.bytes.toString('utf8');
}

export interface DocumentRequest {
  readonly accept: string;
  readonly headers?: Record<string, string>;
  /** For the whole exchange: connecting, the answer's head and its body. */
  readonly timeoutMs: number;
  readonly dispatcher?: Dispatcher;
  /** Aborts the exchange early (its owner closed). */
  readonly signal?: AbortSignal;
  readonly maxBytes: number;
  readonly tooLarge: () => Error;
}

export interface Document {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The body, when the status is 200. */
  readonly text?: string;
}

/** The statuses that redirect (a 304 is an answer: the document is unchanged). */
const REDIRECTS: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);

/**
 * A redirect is refused, and says so: reported as a bare "HTTP 301" it read as the server
 * failing, and an operator could not tell that the configured URL only had to be the one it
 * points to. Both URLs are named by origin and path only: a query may carry a credential.
 */
function redirected(url: URL, status: number, location: string | string[] | undefined): Error {
  let to: string | undefined;
  try { if (typeof location === 'string') to = redactUrl(new URL(location, url).href); } catch { /* no usable Location: say the rest */ }
  return new Error(`HTTP ${status} from ${redactUrl(url.href)}: redirects are not followed; configure the final URL${to !== undefined ? ` (Location: ${to})` : ''}`);
}

/**
 * GET a small document, following no redirect (a redirect is thrown, saying so): its status
 * and headers, and its body as text when the status is 200 (any other body is discarded).
 * The body is refused past maxBytes, by its content-length or as it comes.
 */
export async function getDocument(url: URL, o: DocumentRequest): Promise<Document> {
  const res = await request(url, {
    method: 'GET',
    headers: { accept: o.accept, ...o.headers },
    headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs,
    signal: o.signal ? AbortSignal.any([AbortSignal.timeout(o.timeoutMs), o.signal]) : AbortSignal.timeout(o.timeoutMs),
    ...(o.dispatcher ? { dispatcher: o.dispatcher } : {}),
  });
  if (REDIRECTS.has(res.statusCode)) { await res.body.dump(); throw redirected(url, res.statusCode, res.headers.location); }
  if (res.statusCode !== 200) { await res.body.dump(); return { status: res.statusCode, headers: res.headers }; }
  if (Number(res.headers['content-length'] ?? 0) > o.maxBytes) { await res.body.dump(); throw o.tooLarge(); }
  return { status: 200, headers: res.headers, text: await boundedText(res.body, o.maxBytes, o.tooLarge) };
}
