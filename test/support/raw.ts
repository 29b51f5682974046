// A raw HTTP/1.1 client: sends exactly the bytes given (fetch and undici normalise paths and
// refuse odd headers, which would hide the very requests the bypass tests need to send).

import { connect } from 'node:net';

export interface RawResponse {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
  readonly json: () => any;
}

/** Send `request` (a full request head, and body if any) to 127.0.0.1:port; read one response. */
export function raw(port: number, request: string | Buffer, timeoutMs = 5000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { socket.destroy(); reject(new Error('raw request timed out')); }, timeoutMs);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      const parsed = parse(Buffer.concat(chunks));
      if (parsed) { clearTimeout(timer); socket.destroy(); resolve(parsed); }
    });
    socket.on('end', () => {
      clearTimeout(timer);
      const parsed = parse(Buffer.concat(chunks), true);
      if (parsed) resolve(parsed); else reject(new Error('connection closed without a response'));
    });
    socket.on('error', (err) => { clearTimeout(timer); reject(err); });
    socket.write(request);
  });
}

function parse(buf: Buffer, ended = false): RawResponse | undefined {
  const text = buf.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) { const i = l.indexOf(':'); headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim(); }
  const rest = buf.subarray(Buffer.byteLength(text.slice(0, end + 4), 'latin1'));
  const length = headers['content-length'] !== undefined ? Number(headers['content-length']) : undefined;
  if (length !== undefined && rest.length < length) return undefined;
  if (length === undefined && headers['transfer-encoding'] === 'chunked') {
    if (!rest.toString('latin1').includes('0\r\n\r\n') && !ended) return undefined;
    const body = dechunk(rest.toString('utf8'));
    return { status: Number(statusLine!.split(' ')[1]), headers, body, json: () => JSON.parse(body) };
  }
  if (length === undefined && !ended) return undefined;
  const body = rest.subarray(0, length ?? rest.length).toString('utf8');
  return { status: Number(statusLine!.split(' ')[1]), headers, body, json: () => JSON.parse(body) };
}

function dechunk(s: string): string {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const nl = s.indexOf('\r\n', i);
    const size = parseInt(s.slice(i, nl), 16);
    if (!size) break;
    out += s.slice(nl + 2, nl + 2 + size);
    i = nl + 2 + size + 2;
  }
  return out;
}

/** A GET request head for `target` with extra header lines. */
export function get(target: string, headers: string[] = [], method = 'GET'): string {
  return `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => h + '\r\n').join('')}Connection: close\r\n\r\n`;
}
