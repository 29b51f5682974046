// HTTP/1.1 answers written straight to a socket, for the connections Node's server no longer
// manages: a WebSocket handshake (the socket is ours from the 'upgrade' event on) and a
// request Node could not parse. A 101 hands the connection to the tunnel; any other answer
// written here closes it.

import { STATUS_CODES, type ServerResponse } from 'node:http';
import { Socket } from 'node:net';

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Field values as RFC 9110 allows them: no CR, LF or NUL can reach the wire. */
const VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * The status line and header block. A name that is not a token or a value that is not a
 * field value is left out rather than written: nothing may split the answer. Write it as
 * latin1, the encoding Node's parser read the values in.
 */
export function responseHead(status: number, headers: Readonly<Record<string, string | readonly string[] | number>>): string {
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name)) continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      const s = String(v);
      if (VALUE.test(s)) head += `${name}: ${s}\r\n`;
    }
  }
  return head + '\r\n';
}

/**
 * A whole answer with a UTF-8 body, for a connection that ends after it (`connection: close`
 * is added, and `date`, which Node's server would have written: RFC 9110 §6.6.1).
 */
export function closingResponse(status: number, headers: Readonly<Record<string, string | readonly string[] | number>>, body: string): Buffer {
  return Buffer.concat([Buffer.from(responseHead(status, { date: new Date().toUTCString(), ...headers, connection: 'close' }), 'latin1'), Buffer.from(body, 'utf8')]);
}

/** How long a client may take to read an answer on a closing connection before it is cut. */
export const LINGER_MS = 2_000;

/**
 * Cut an answer that has started. One with neither a length nor chunked framing (to an
 * HTTP/1.0 client, a refused handshake's, written raw) runs to the close, and a clean end
 * (FIN) made it look whole: its connection is reset (RST). Any other is destroyed as ever: a
 * reset also throws away what the kernel still holds to send, the whole earlier answer of a
 * pipelined request included, and its missing length or last chunk already shows the cut.
 */
export function cutAnswer(target: ServerResponse | Socket): void {
  const socket = target instanceof Socket ? target : target.socket;
  const closeDelimited = target instanceof Socket || target.req.httpVersion === '1.0';
  if (closeDelimited && socket && !socket.destroyed) {
    try { socket.resetAndDestroy(); } catch { socket.destroy(); }
  }
  if (!(target instanceof Socket)) target.destroy();
}

/**
 * End `socket` after `data` and close it for good once the client has had LINGER_MS to read:
 * Node's server sockets allow half-open connections, and a socket handed over by the server
 * has no idle timer, so end() alone left a client that never closed its side holding the
 * connection (and, for a handshake, a request in flight that every drain waited for) as long
 * as it liked. Not destroyed at once: bytes the client sent and driftguard never read would
 * make the kernel reset the connection, and the client could lose the answer.
 */
export function endAndClose(socket: Socket, data?: Buffer | string, done?: () => void): void {
  const linger = (): void => {
    const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
    socket.once('close', () => clearTimeout(timer));
    done?.();
  };
  if (data === undefined) socket.end(linger);
  else socket.end(data, linger);
}
