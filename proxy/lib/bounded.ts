// Bodies driftguard reads whole: documents it fetches for itself (signing keys, discovery,
// revocation lists) from servers that can go wrong, and admin API requests. A body is read
// no further than its limit, whatever its content-length says or leaves out, so that no
// sender can fill the sidecar's memory.

/** A body as UTF-8 text, or `tooLarge()` thrown once more than `max` bytes have come. */
export async function boundedText(body: AsyncIterable<Uint8Array>, max: number, tooLarge: () => Error): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  // Leaving the loop by throwing ends the iteration, which destroys (or cancels) the body:
  // the rest is never read.
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > max) throw tooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size).toString('utf8');
}
