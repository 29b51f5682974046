// A reload's rules reach what is already open: each WebSocket tunnel, and each answer already
// streaming, is decided again as if the new rules had been in force when it was decided, and
// closed if they refuse it; a tunnel they keep ends at their dates. An upload whose answer has
// not started finishes under the rules it was decided with; an answer that starts later and
// streams on is decided again. Real `ws` client and server, real
// upstream, real driftguard with the lifecycle feature, rules reloaded from files.

import t, { type Test } from 'tap';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { BOT, writeRules } from '../support/driftguard.ts';
import { jwks, testKey } from '../support/keys.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { echoServer, eventStream, open, readStream, within } from '../support/tunnels.ts';
import { world, startLifecycle, bearer, until, type World } from '../lifecycle/support.ts';

/** Base rules on `up`, task binding off; BOT declares getItem unless `botGets` is false. */
function rules(w: World, up: string, patch: (r: Record<string, any>) => void = () => {}): Record<string, any> {
  const r = w.rules(patch);
  r.proxy.upstream = up;
  r.credentials = { taskBindingAt: 'never' };
  return r;
}

const dropBotsGetItem = (r: Record<string, any>) => { r.consumers.registry.find((c: { subject: string }) => c.subject === BOT).operations = ['deleteItem']; };

/** A world, a WebSocket echo upstream, driftguard with the base rules, and the agent's tunnel through it. */
async function agentTunnel(t: Test) {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(rules(w, up));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agent = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token());
  t.teardown(() => agent.ws.terminate());
  return { w, up, dg, agent };
}

t.test('a reload that takes an operation from a consumer closes its open tunnels to it, and only those', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(rules(w, up));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const url = dg.url.replace('http', 'ws') + '/items/1';
  const agent = await open(url, await w.token());
  const bot = await open(url, await w.token({ sub: BOT }));
  t.teardown(() => { agent.ws.terminate(); bot.ws.terminate(); });
  t.equal(await bot.ask('1'), 'echo:1', 'the bot\'s tunnel works');
  await dg.dg.swap(loadRules(writeRules(rules(w, up, dropBotsGetItem))));
  // Before: the bot's tunnel stayed open until its token expired or tunnelIdle passed.
  t.equal(await within(bot.closed, 2_000), 1006, 'the bot\'s tunnel is closed');
  t.equal(await within(agent.ask('2'), 1_000), 'echo:2', 'the agent\'s stays open');
  t.match(dg.logs.find((l) => l.msg === 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them'), { tunnels: 1, answers: 0, reasons: { 'undeclared-operation': 1 } }, 'logged, with the count and the reason');
  const bot2 = await open(url, await w.token({ sub: BOT })).catch((e: Error) => e.message);
  t.equal(bot2, 'handshake 403', 'a new handshake is refused the same way');
});

t.test('a reload that still allows a tunnel keeps it, and ends it at the new rules\' sunset', async (t) => {
  const { w, up, dg, agent } = await agentTunnel(t);
  const sunset = new Date(Date.now() + 1_500).toISOString();
  await dg.dg.swap(loadRules(writeRules(rules(w, up, (r) => {
    r.contract.operations.find((o: { id: string }) => o.id === 'getItem').deprecated = { since: '2026-01-01', sunset };
  }))));
  t.equal(await within(agent.ask('still'), 800), 'echo:still', 'kept: the new rules allow it until the sunset');
  // Before: the new sunset reached only tunnels opened after the reload.
  t.equal(await within(agent.closed, 3_000), 1006, 'closed at the sunset the reload set');
});

t.test('a reload that still allows an event stream keeps it, and ends it at the new rules\' sunset', async (t) => {
  const w = await world();
  w.up.handler = eventStream(t);
  const dg = await startLifecycle(rules(w, w.up.origin));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agents = await readStream(t, `${dg.url}/items/1`, await w.token());
  // On a whole second, as the rules write dates.
  const sunsetAt = Math.ceil((Date.now() + 1_500) / 1000) * 1000;
  await dg.dg.swap(loadRules(writeRules(rules(w, w.up.origin, (r) => {
    r.contract.operations.find((o: { id: string }) => o.id === 'getItem').deprecated = { since: '2026-01-01', sunset: new Date(sunsetAt).toISOString() };
  }))));
  await new Promise((r) => setTimeout(r, 800));
  t.notOk(agents.state.ended, 'kept: the new rules allow it until the sunset');
  // Before: the reload's sunset did not reach it, and it streamed on.
  t.ok(await until(() => agents.state.ended, 3_000), 'cut at the sunset the reload set');
  t.ok(Date.now() >= sunsetAt, 'not before it');
  const record = dg.seen.find((s) => s.ctx.req.url === '/items/1');
  t.ok(await until(() => record?.forwarded !== undefined), 'its request is done');
  t.equal(record?.forwarded?.error, 'expired');
  t.equal(record?.ctx.extra['cut.reason'], 'operation-sunset');
});

t.test('under proxy.mode audit a reload that would refuse a tunnel keeps it', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const audit = (r: Record<string, any>) => { r.proxy.mode = 'audit'; };
  const dg = await startLifecycle(rules(w, up, audit));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const bot = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token({ sub: BOT }));
  t.teardown(() => bot.ws.terminate());
  await dg.dg.swap(loadRules(writeRules(rules(w, up, (r) => { audit(r); dropBotsGetItem(r); }))));
  t.equal(await within(bot.closed, 1_500), 'still open');
  t.equal(await within(bot.ask('3'), 1_000), 'echo:3');
});

t.test('a streaming answer the reloaded rules refuse is cut and recorded `reload`; an upload whose answer has not started finishes', async (t) => {
  const w = await world();
  let release: (() => void) | undefined;
  let uploaded = false;
  const events = eventStream(t);
  w.up.handler = (req, res) => {
    if (req.method !== 'PUT') { events(req, res); return; }
    // Holds the upload's answer until the test releases it, after the reload.
    req.resume();
    req.once('end', () => { uploaded = true; });
    release = () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"stored":true}'); };
  };
  const dg = await startLifecycle(rules(w, w.up.origin));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const stream = (tok: string) => readStream(t, `${dg.url}/items/1`, tok);
  const bots = await stream(await w.token({ sub: BOT }));
  const agents = await stream(await w.token());
  // The agent's upload: decided and forwarded, its answer held by the upstream.
  const upload = fetch(`${dg.url}/items/1/blob`, { method: 'PUT', headers: bearer(await w.token(), { 'content-type': 'application/octet-stream' }), body: 'x'.repeat(1000) });
  t.ok(await until(() => release !== undefined), 'the upload reached the upstream');
  // Wholly sent before the reload (an upload still arriving is cut): its body's end, not a fixed 200 ms.
  t.ok(await until(() => uploaded), 'the upload\'s body arrived whole');
  // Reloaded: the bot may no longer read items, and nobody may upload.
  await dg.dg.swap(loadRules(writeRules(rules(w, w.up.origin, (r) => {
    dropBotsGetItem(r);
    r.contract.operations.find((o: { id: string }) => o.id === 'upload').scopes = ['items.upload'];
  }))));
  t.ok(await until(() => bots.state.ended, 2_000), 'the bot\'s stream is cut (it went on streaming)');
  t.notOk(agents.state.ended, 'the agent\'s stream goes on');
  const cut = dg.seen.find((s) => s.ctx.consumer?.subject === BOT && s.ctx.req.method === 'GET');
  t.ok(await until(() => cut?.forwarded !== undefined), 'the bot\'s request is done');
  t.equal(cut?.forwarded?.error, 'reload', 'recorded as cut by the reload, not as a client that left');
  release!();
  const answered = await upload;
  t.equal(answered.status, 200, 'the upload decided before the reload gets its answer');
  t.equal(await answered.text(), '{"stored":true}');
  t.match(dg.logs.find((l) => l.msg === 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them'), { tunnels: 0, answers: 1 });
  await agents.stop();
});

t.test('a stream whose answer starts after a reload is decided again once it has streamed a second: the refused one is cut, the kept one goes on', async (t) => {
  const w = await world();
  const events = eventStream(t);
  const held: (() => void)[] = [];
  // The upstream holds each stream's head (a long poll that turns into events) until released.
  w.up.handler = (req, res) => { held.push(() => events(req, res)); };
  const dg = await startLifecycle(rules(w, w.up.origin));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const bots = readStream(t, `${dg.url}/items/1`, await w.token({ sub: BOT }));
  const agents = readStream(t, `${dg.url}/items/1`, await w.token());
  t.ok(await until(() => held.length === 2), 'both requests reached the upstream');
  await dg.dg.swap(loadRules(writeRules(rules(w, w.up.origin, dropBotsGetItem))));
  t.notOk(dg.logs.some((l) => l.msg === 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them'), 'nothing had started: nothing cut at the reload');
  await new Promise((r) => setTimeout(r, 300));
  for (const release of held) release();
  const [bot, agent] = await Promise.all([bots, agents]);
  t.ok(await until(() => bot.state.ended, 4_000), 'the bot\'s late stream is cut (it went on streaming under the old rules)');
  t.ok(bot.state.events >= 5, 'after it had streamed a while, not at its head');
  t.notOk(agent.state.ended, 'the agent\'s stream goes on');
  const cut = dg.seen.find((s) => s.ctx.consumer?.subject === BOT);
  t.ok(await until(() => cut?.forwarded !== undefined), 'the bot\'s request is done');
  t.equal(cut?.forwarded?.error, 'reload', 'recorded as cut by the reload');
  t.match(dg.logs.find((l) => l.msg === 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them'), { tunnels: 0, answers: 1, reasons: { 'undeclared-operation': 1 } });
  await agent.stop();
});

t.test('a request still being decided at a reload (its body read by a monitor) whose answer then streams is decided again and cut', async (t) => {
  const w = await world();
  const events = eventStream(t);
  let reached = 0;
  w.up.handler = (req, res) => { reached++; req.resume(); req.on('end', () => events(req, res)); };
  const dg = await startLifecycle(rules(w, w.up.origin));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const s = connect(Number(new URL(dg.url).port), '127.0.0.1');
  let got = '';
  let closed = false;
  s.on('data', (d: Buffer) => { got += d.toString(); });
  s.on('close', () => { closed = true; });
  s.on('error', () => {});
  t.teardown(() => s.destroy());
  await new Promise((r) => s.once('connect', r));
  // Half the body: the idempotency monitor reads it whole before the decision is made.
  s.write(`PUT /items/1/blob HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${await w.token()}\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\n` + 'x'.repeat(50));
  t.ok(await until(() => dg.seen.length === 1), 'the request arrived');
  t.equal(dg.seen[0]!.decision, undefined, 'still being decided at the reload');
  // Nobody holds the scope the reloaded rules ask of an upload.
  await dg.dg.swap(loadRules(writeRules(rules(w, w.up.origin, (r) => { r.contract.operations.find((o: { id: string }) => o.id === 'upload').scopes = ['items.upload']; }))));
  s.write('y'.repeat(50));
  t.ok(await until(() => reached === 1), 'forwarded, decided under the rules it arrived under');
  t.ok(await until(() => got.includes('data: event')), 'its answer streams');
  // Before: it streamed on under the old rules while the same upload, sent anew, was refused.
  t.ok(await until(() => closed, 4_000), 'cut once it has streamed a second');
  t.equal(dg.seen[0]!.forwarded?.error, 'reload', 'recorded as cut by the reload');
  t.equal(dg.seen[0]!.ctx.extra['cut.reason'], 'insufficient-scope', 'and why: the record names the refusal\'s reason');
  t.match(dg.logs.find((l) => l.msg === 'WebSocket tunnels and streaming answers closed: the reloaded rules refuse them'), { tunnels: 0, answers: 1, reasons: { 'insufficient-scope': 1 } });
});

t.test('a reload that adds a revocation list URL, not yet read, closes nothing: driftguard\'s own 503 refuses no open tunnel', async (t) => {
  const lists = createServer((_req, res) => { setTimeout(() => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"revocations":[]}'); }, 300); });
  await new Promise<void>((r) => lists.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { lists.closeAllConnections(); lists.close(() => r()); }));
  const listUrl = `http://127.0.0.1:${(lists.address() as AddressInfo).port}/list.json`;
  const { w, up, dg, agent } = await agentTunnel(t);
  await dg.dg.swap(loadRules(writeRules(rules(w, up, (r) => { r.revocation = { url: listUrl, interval: '10s', timeout: '2s' }; }))));
  // Before: closed at once, with reason revocation-list-unavailable.
  t.equal(await within(agent.closed, 1_500), 'still open', 'nothing was revoked: the tunnel stays');
  t.equal(await within(agent.ask('1'), 1_000), 'echo:1');
});

t.test('under proxy.mode audit a tunnel kept by a reload still ends when its token expires', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const audit = (extra: (r: Record<string, any>) => void = () => {}) => rules(w, up, (r) => { r.proxy.mode = 'audit'; r.identity.clockSkew = '0s'; extra(r); });
  const dg = await startLifecycle(audit());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agent = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token({ ttl: 2 }));
  t.teardown(() => agent.ws.terminate());
  // A sunset past: a would-deny before the credential check.
  await dg.dg.swap(loadRules(writeRules(audit((r) => {
    r.contract.operations.find((o: { id: string }) => o.id === 'getItem').deprecated = { since: '2020-01-01', sunset: '2020-06-01T00:00:00Z' };
  }))));
  t.equal(await within(agent.ask('kept'), 800), 'echo:kept', 'kept: audit mode');
  // Before: its token's end was lost with the context, and it stayed open.
  t.equal(await within(agent.closed, 4_000), 1006, 'closed at its token\'s exp');
});

t.test('a handshake decided before a reload whose 101 comes after it is decided again under the new rules', async (t) => {
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (s) => s.on('message', (m) => s.send(`echo:${m}`)));
  const server = createServer();
  let upgrades = 0;
  // The upstream answers the handshake 600 ms late: the reload comes in between.
  server.on('upgrade', (req, socket, head) => { upgrades++; setTimeout(() => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)), 600); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const up = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const w = await world();
  const dg = await startLifecycle(rules(w, up));
  t.teardown(async () => { await dg.close(); await w.close(); for (const c of wss.clients) c.terminate(); server.closeAllConnections(); server.close(); });
  const answer = rawHandshake(dg.url, await w.token({ sub: BOT }));
  t.ok(await until(() => upgrades > 0, 1_000), 'the handshake reached the upstream');
  await dg.dg.swap(loadRules(writeRules(rules(w, up, dropBotsGetItem))));
  // Before: it stayed open, while a new handshake of the same bot was refused. Decided again at
  // the reload, as a handshake in flight, it was cut before its 101 with a reset that said
  // nothing; now it is refused as a new handshake would be.
  const text = await answer;
  t.match(text, /^HTTP\/1\.1 403 /, 'refused with the reloaded rules\' status');
  const problem = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
  t.equal(problem.reason, 'undeclared-operation', 'and their reason');
  t.match(problem.detail, /^the reloaded rules refuse it \(.+\) while the upstream had not answered the handshake: it was not switched$/, 'saying why, and that no WebSocket opened');
  const record = dg.seen.find((x) => x.ctx.consumer?.subject === BOT);
  t.ok(await until(() => record?.forwarded !== undefined), 'its handshake is done');
  t.match(record?.forwarded, { failure: 'undeclared-operation' }, 'recorded with that reason as the forward stage\'s');
  t.equal(record?.forwarded?.status, undefined, 'no upstream status: it never switched');
});

t.test('a handshake whose keys were fetched while a reload swapped the rules is decided again under the new ones', async (t) => {
  const server = createServer();
  let upgrades = 0;
  // Never answers the handshake: what decides it is driftguard.
  server.on('upgrade', () => { upgrades++; });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const up = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const w = await world();
  const shortCooldown = (r: Record<string, any>) => { r.identity.issuers[0].jwks.cooldown = '1s'; r.proxy.timeouts.response = '2s'; };
  const dg = await startLifecycle(rules(w, up, shortCooldown));
  t.teardown(async () => { await dg.close(); await w.close(); server.closeAllConnections(); server.close(); });
  // The issuer rotates in a key: a token signed with it makes driftguard fetch the keys again,
  // which the key server answers 400 ms late; the reload (same identity section, so it shares
  // the key set and does not wait for it) swaps the rules in meanwhile.
  await new Promise((r) => setTimeout(r, 1_100)); // past the start-up fetch's cooldown
  const rotated = await testKey('ES256');
  w.keys.body = jwks(w.key, rotated);
  w.keys.delayMs = 400;
  const answer = rawHandshake(dg.url, await w.token({ sub: BOT, key: rotated }));
  t.ok(await until(() => w.keys.fetches === 2, 1_000), 'its keys are being fetched');
  await dg.dg.swap(loadRules(writeRules(rules(w, up, (r) => { shortCooldown(r); dropBotsGetItem(r); }))));
  const text = await answer;
  // Before: decided under the replaced rules, it went upstream and waited for its answer (a 504 here).
  t.match(text, /^HTTP\/1\.1 403 /, 'refused under the rules in force when it was forwarded');
  t.equal(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)).reason, 'undeclared-operation');
  t.ok(upgrades <= 1, 'sent upstream at most once');
});

/** A WebSocket handshake for /items/1 over a raw socket: everything the client gets until driftguard closes. */
function rawHandshake(url: string, token: string): Promise<string> {
  return new Promise((resolve) => {
    const c = connect(Number(new URL(url).port), '127.0.0.1');
    let got = '';
    c.setEncoding('latin1');
    c.on('data', (d: string) => { got += d; });
    c.on('error', () => {});
    c.on('close', () => resolve(got));
    c.write(`GET /items/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
  });
}
