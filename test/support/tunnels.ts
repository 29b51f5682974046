// A WebSocket echo upstream and a client that opens a tunnel through driftguard, for the tests
// of what ends a tunnel (revocation, quarantine, expiry, a reload). Real `ws` client and server.

import type { Test } from 'tap';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import WebSocket, { WebSocketServer } from 'ws';

/** A WebSocket server on loopback that echoes each message as `echo:<message>`; its origin. */
export async function echoServer(t: Test): Promise<string> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  wss.on('connection', (s) => s.on('message', (m) => s.send(`echo:${m}`)));
  t.teardown(() => new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); }));
  return `http://127.0.0.1:${(wss.address() as AddressInfo).port}`;
}

export interface Open { ws: WebSocket; closed: Promise<number>; ask(m: string): Promise<string> }

/** Open a tunnel with this bearer token; rejects with `handshake <status>` when refused. */
export async function open(url: string, token: string): Promise<Open> {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); ws.once('unexpected-response', (_q, res) => reject(new Error(`handshake ${res.statusCode}`))); });
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.on('error', () => {});
  return { ws, closed, ask: (m) => new Promise((r) => { ws.once('message', (d) => r(String(d))); ws.send(m); }) };
}

/** `p`'s value, or 'still open' if it has not settled within `ms`. */
export const within = <T>(p: Promise<T>, ms: number): Promise<T | 'still open'> =>
  Promise.race([p, new Promise<'still open'>((r) => setTimeout(() => r('still open'), ms))]);

/** An upstream handler that answers server-sent events, one every 50 ms, until the client leaves. */
export function eventStream(t: Test): (req: IncomingMessage, res: ServerResponse) => void {
  const ticks: NodeJS.Timeout[] = [];
  t.teardown(() => { for (const x of ticks) clearInterval(x); });
  return (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let n = 0;
    const tick = setInterval(() => res.write(`data: event ${n++}\n\n`), 50);
    ticks.push(tick);
    res.on('close', () => clearInterval(tick));
  };
}

export interface Streaming { readonly state: { events: number; ended: boolean }; stop(): Promise<void> }

/** GET `url` with this token as an event stream, read in the background; `state.ended` once it ends or is cut. */
export async function readStream(t: Test, url: string, token: string): Promise<Streaming> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' } });
  t.equal(res.status, 200, 'the stream opens');
  const reader = res.body!.getReader();
  const state = { events: 0, ended: false };
  void (async () => { try { for (;;) { const { done, value } = await reader.read(); if (done) break; state.events += (Buffer.from(value).toString().match(/data:/g) ?? []).length; } } catch { /* cut */ } state.ended = true; })();
  return { state, stop: () => reader.cancel().catch(() => {}) };
}
