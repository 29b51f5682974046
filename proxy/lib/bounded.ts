// Bodies driftguard reads whole: documents it fetches for itself (signing keys, discovery,
// revocation lists) from servers that can go wrong, and admin API requests. A body is read
// no further than its limit, whatever its content-length says or leaves out, so that no
// sender can fill the sidecar's memory.

import { request, type Dispatcher } from 'undici';

/** A body as UTF-8 text, or `tooLarge()` thrown once more than `max` bytes have come. */
export async function boundedText(body: AsyncIterable<Uint8Array>, max: number, tooLarge: () => Error): Promise<string> {
  // Copied into one buffer that doubles as it fills: kept as the chunks they came in, a body
  // sent a byte at a time held a Buffer object per byte (127 such admin requests held the
  // chart's whole heap for their 30 s).
  let kept = Buffer.allocUnsafe(0);
  let size = 0;
  // Leaving the loop by throwing ends the iteration, which destroys (or cancels) the body:
  // the rest is never read.
  for await (const chunk of body) {
    if (size + chunk.byteLength > max) throw tooLarge();
    if (size + chunk.byteLength > kept.length) {
      const grown = Buffer.allocUnsafe(Math.min(max, Math.max(1024, 2 * (size + chunk.byteLength))));
      kept.copy(grown, 0, 0, size);
      kept = grown;
    }
    kept.set(chunk, size);
    size += chunk.byteLength;
  }
  return kept.toString('utf8', 0, size);
}

export interface DocumentRequest {
  readonly accept: string;
  readonly headers?: Record<string, string>;
  /** For the whole exchange: connecting, the answer's head and its body. */
  readonly timeoutMs: number;
  readonly dispatcher?: Dispatcher;
  readonly maxBytes: number;
  readonly tooLarge: () => Error;
}

export interface Document {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The body, when the status is 200. */
  readonly text?: string;
}

/**
 * GET a small document, following no redirect: its status and headers, and its body as text
 * when the status is 200 (any other body is discarded). The body is refused past maxBytes, by
 * its content-length or as it comes.
 */
export async function getDocument(url: URL, o: DocumentRequest): Promise<Document> {
  const res = await request(url, {
    method: 'GET',
    headers: { accept: o.accept, ...o.headers },
    headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs, signal: AbortSignal.timeout(o.timeoutMs),
    ...(o.dispatcher ? { dispatcher: o.dispatcher } : {}),
  });
  if (res.statusCode !== 200) { await res.body.dump(); return { status: res.statusCode, headers: res.headers }; }
  if (Number(res.headers['content-length'] ?? 0) > o.maxBytes) { await res.body.dump(); throw o.tooLarge(); }
  return { status: 200, headers: res.headers, text: await boundedText(res.body, o.maxBytes, o.tooLarge) };
}
