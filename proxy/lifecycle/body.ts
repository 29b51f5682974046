// The request's body fingerprint, for the retry-storm and idempotency monitors. Only small
// bodies with a Content-Length (up to monitors.maxBodyBytes) are read, whole, and hashed;
// their bytes go to ctx.body so the forwarder sends them on. Larger and chunked bodies are
// never read here: they stream to the upstream untouched and are fingerprinted by their
// declared length only (as a number: `041` and `41` are one length), which can make two
// different bodies look the same (a monitor then over-matches). The same bytes sent once
// chunked and once with a Content-Length are two fingerprints: a chunked body is not read.

import { hash } from 'node:crypto';
import type { RequestContext } from '../pipeline/types.ts';
import { hasBody } from '../forward/forward.ts';
import { BODY_UNPARSABLE, unparsableBodies } from '../lib/incoming.ts';

/**
 * A body's declared length: -1 chunked (never read here), else its Content-Length as a number
 * (0 without one). Node accepts only digits there, but leading zeros too: as a number, a retry
 * cannot look new by re-spelling it (`Content-Length: 0041`, or `00` for none).
 */
export function declaredSize(req: RequestContext['req']): number {
  return req.headers['transfer-encoding'] !== undefined ? -1 : Number(req.headers['content-length'] ?? 0);
}

/** Read at most once per request (the caller memoizes). A sha256 of the body, `len:N` or `chunked` when it was not read, or `''` when there is none; undefined when the body could not be read. */
export async function bodyFingerprint(ctx: RequestContext, maxBytes: number, timeoutMs: number): Promise<string | undefined> {
  const req = ctx.req;
  let fingerprint: string | undefined;
  const size = declaredSize(req);
  if (size < 0) fingerprint = 'chunked';
  else if (!hasBody(req) || size === 0) fingerprint = '';
  else if (size > maxBytes) fingerprint = `len:${size}`;
  else {
    const body = await readWhole(ctx, size, timeoutMs);
    if (body === undefined) return undefined;
    ctx.body = body;
    fingerprint = hash('sha256', body, 'base64');
  }
  return fingerprint;
}

function readWhole(ctx: RequestContext, length: number, timeoutMs: number): Promise<Buffer | undefined> {
  const req = ctx.req;
  // The caller left (while its keys were being fetched, say): the body is gone with it, and no
  // event would come, so the read would wait out the whole timeout.
  if (req.destroyed) return Promise.resolve(undefined);
  // Or its body was given up on by Node's parser before this read began (a FIN with the head).
  if (unparsableBodies.has(req)) return Promise.resolve(undefined);
  ctx.sendContinue?.();
  return new Promise((resolve) => {
    // Copied into one buffer of its length (at most monitors.maxBodyBytes): kept as the chunks
    // they came in, a body sent a byte per segment held a Buffer object per byte, and 500 such
    // requests from one token ran the chart's heap out.
    const whole = Buffer.allocUnsafe(length);
    let size = 0;
    const done = (body: Buffer | undefined) => {
      clearTimeout(timer);
      req.off('data', onData); req.off('end', onEnd); req.off('error', onError); req.off('aborted', onError); req.off(BODY_UNPARSABLE, onError);
      resolve(body);
    };
    const onData = (chunk: Buffer) => {
      // Node's parser never delivers more than Content-Length; the guard keeps that promise here.
      if (size + chunk.length > length) { done(undefined); return; }
      chunk.copy(whole, size);
      size += chunk.length;
    };
    const onEnd = () => done(size === length ? whole : undefined);
    const onError = () => done(undefined);
    const timer = setTimeout(() => done(undefined), timeoutMs);
    req.on('data', onData); req.once('end', onEnd); req.once('error', onError); req.once('aborted', onError); req.once(BODY_UNPARSABLE, onError);
  });
}
