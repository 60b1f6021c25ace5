// Browser test of the built-in web client: headless Chromium pages against the real
// server binary. See README.md in this folder for how to run it.
//
// Every wait is on a condition in the page (locators' auto-wait, waitForFunction) or on the
// server's health endpoint answering; nothing sleeps for a fixed time. (One check gives a
// plain HTTP request to the TLS port a deadline: it must fail or get no page, not hang.)

import { execFileSync, spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(ROOT, process.env.SMOLCHAT_BIN || 'target/debug/smolchat');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = path.join(ROOT, 'target', 'browser');
const TIMEOUT = 15_000;
const LAUNCH_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// ---------------------------------------------------------------- the server

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** `GET url` as a fetch-like `{status, headers: {get}, text()}`: Node's fetch for http, and
 * node:https for https, trusting only `ca` (PEM), so the server's certificate is checked. */
function get(url, { ca } = {}) {
  if (!url.startsWith('https:')) return fetch(url);
  return new Promise((resolve, reject) => {
    // Like a browser (and fetch): the page is served gzip-compressed to clients that accept it.
    const headers = { 'accept-encoding': 'gzip' };
    const req = https.get(url, { ca, timeout: TIMEOUT, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const gzipped = res.headers['content-encoding'] === 'gzip';
        const body = (gzipped ? zlib.gunzipSync(raw) : raw).toString('utf8');
        resolve({
          status: res.statusCode,
          ok: res.statusCode >= 200 && res.statusCode < 300,
          headers: { get: (name) => { const v = res.headers[name.toLowerCase()]; return v === undefined ? null : String(v); } },
          text: async () => body,
        });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${TIMEOUT} ms`)));
    req.on('error', reject);
  });
}

/** A self-signed certificate for localhost and 127.0.0.1 (P-256, one day), made by openssl
 * into target/browser/; returns the files' paths and the certificate's PEM. */
function makeCert() {
  const cert = path.join(OUT, 'tls-cert.pem');
  const key = path.join(OUT, 'tls-key.pem');
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', key, '-out', cert,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    throw new Error(`openssl could not make a certificate (apt-get install -y openssl): ${e.stderr ? e.stderr.toString().trim() : e.message}`);
  }
  return { cert, key, pem: fs.readFileSync(cert, 'utf8') };
}

const serverLog = [];

// Tokens for the auth checks, signed here with node's own HMAC (not smolchat's signer).
const AUTH_SECRET = 'the browser test secret, at least 32 bytes long';
const API_KEY = 'browser-test-api-key-0123456789';
const now = () => Math.floor(Date.now() / 1000);
function jwt(claims, secret = AUTH_SECRET) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

class Server {
  /** `args` are more flags (e.g. `--protocol raw`); `log` is its log's file in target/browser/;
   * `ca` (a PEM certificate) makes it a TLS server, whose health is asked for over https. */
  constructor(port, { args = [], log = 'server.log', ca = null } = {}) {
    this.port = port;
    this.args = args;
    this.log = path.join(OUT, log);
    this.ca = ca;
    this.child = null;
  }

  async start() {
    const child = spawn(BIN, ['--listen', `127.0.0.1:${this.port}`, '--log-level', 'info', ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let spawnError = null;
    child.once('error', (e) => { spawnError = e; });
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        serverLog.push(chunk);
        fs.appendFileSync(this.log, chunk);
      });
    }
    // Ready when /healthz answers; a retry every 50 ms, failing after TIMEOUT.
    const deadline = Date.now() + TIMEOUT;
    let gone = false;
    this.exited.then(() => { gone = true; });
    for (;;) {
      if (spawnError) throw new Error(`cannot start ${BIN}: ${spawnError.message}`);
      if (gone) {
        const hint = this.ca ? ' (a binary built without `--features tls` knows no --tls-cert)' : '';
        throw new Error(`the server exited at startup${hint}:\n${serverLog.join('').slice(-2000)}`);
      }
      try {
        const r = await get(`${this.ca ? 'https' : 'http'}://127.0.0.1:${this.port}/healthz`, { ca: this.ca });
        if (r.ok) return;
      } catch (_) { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`the server did not answer /healthz within ${TIMEOUT} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stops the server the way an operator would (SIGTERM), forcing it after TIMEOUT. */
  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), TIMEOUT);
    await this.exited;
    clearTimeout(t);
  }
}

// A TCP proxy in front of the server, so one page's connection can be cut without a restart.
class Proxy {
  constructor(target) {
    this.target = target;
    this.paused = false;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      if (this.paused) { client.destroy(); return; }
      const upstream = net.connect(this.target, '127.0.0.1');
      for (const [a, b] of [[client, upstream], [upstream, client]]) {
        this.sockets.add(a);
        a.on('close', () => { this.sockets.delete(a); b.destroy(); });
        a.on('error', () => b.destroy());
        a.pipe(b);
      }
    });
  }
  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve(this.server.address().port)));
  }
  /** Cuts every connection and refuses new ones until resume(). */
  pause() {
    this.paused = true;
    for (const s of this.sockets) s.destroy();
  }
  resume() { this.paused = false; }
  close() {
    this.pause();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

// ---------------------------------------------------------------- test plumbing

const problems = []; // things seen in a page that fail the test (dialogs, script errors, CSP)
let expectCspViolation = false;
let passed = 0;

async function step(name, fn) {
  const started = Date.now();
  await fn();
  if (problems.length) throw new Error(problems.join('\n'));
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - started} ms)`);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

/** Fails the test on what `page` shows that it should not. `favicon`: a 404 for /favicon.ico
 * is expected (raw mode's page names no icon, so the browser asks the server for one). */
function watch(page, name, { favicon = false, refusals = false } = {}) {
  page.setDefaultTimeout(TIMEOUT);
  page.on('dialog', async (d) => {
    problems.push(`page ${name}: a ${d.type()} dialog opened (${JSON.stringify(d.message())}): injected script ran`);
    await d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => problems.push(`page ${name}: uncaught ${e.name}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    // Failed reconnection attempts while the server is down are expected.
    if (/WebSocket connection to .* failed/.test(text)) return;
    if (expectCspViolation && /inline event handler/.test(text)) return;
    // A refused token: the page asks /ws why, and the 401 is the answer it wants.
    if (refusals && new URL(m.location().url || 'about:blank').pathname === '/ws' && /401/.test(text)) return;
    if (favicon && new URL(m.location().url || 'about:blank').pathname === '/favicon.ico' && /404/.test(text)) return;
    problems.push(`page ${name}: console error: ${text}`);
  });
}

const log = (page, key) => page.locator(`.log[data-view="${key}"]`);

/** Waits until `key`'s view shows a message whose text is exactly `text`; returns its element. */
async function seeMessage(page, key, text, from) {
  const msg = log(page, key).locator('.msg').filter({ has: page.locator('.text').getByText(text, { exact: true }) });
  await msg.first().waitFor({ state: 'attached' });
  if (from) {
    const sender = await msg.first().locator('.from').textContent();
    check(sender === from, `message ${JSON.stringify(text)} shows sender ${JSON.stringify(sender)}, expected ${from}`);
  }
  return msg;
}

async function countMessages(page, key, text) {
  return log(page, key).locator('.text').getByText(text, { exact: true }).count();
}

async function say(page, key, text) {
  const input = page.getByLabel(/^Message/);
  await input.fill(text);
  await input.press('Enter'); // Enter sends
  await seeMessage(page, key, text);
  check((await input.inputValue()) === '', 'the message box was not cleared after sending');
}

async function waitStatus(page, state, text) {
  await page.waitForFunction(
    ([s, t]) => {
      const el = document.getElementById('status');
      return el.dataset.state === s && (!t || document.getElementById('status-text').textContent === t);
    },
    [state, text],
  );
}

/** Opens the rooms drawer on a phone-sized page (a no-op where the sidebar is always shown). */
async function openNav(page) {
  const toggle = page.locator('#nav-toggle');
  if ((await toggle.isVisible()) && (await toggle.getAttribute('aria-expanded')) !== 'true') await toggle.click();
}

async function openView(page, key) {
  await openNav(page);
  await page.locator(`.conv[data-view="${key}"]`).click();
  await log(page, key).waitFor({ state: 'visible' });
}

async function memberNames(page) {
  return page.locator('#member-list [data-nick]').evaluateAll((els) => els.map((e) => e.dataset.nick));
}

async function waitMembers(page, present, absent) {
  await page.waitForFunction(
    ([yes, no]) => {
      const names = [...document.querySelectorAll('#member-list [data-nick]')].map((e) => e.dataset.nick);
      return yes.every((n) => names.includes(n)) && no.every((n) => !names.includes(n));
    },
    [present, absent],
  );
}

// A bare protocol client for what the pages cannot do or show: WebSockets opened by `evaluate`
// in a blank page at the server's origin (its /healthz), so the origin check lets them in.

/** Creates the rooms `names` from bare connections, which then close: the rooms stay, empty.
 * Each connection has its own rate limit (bursts of 20), so each makes 15 rooms. */
async function createRooms(raw, names) {
  await raw.evaluate(async ([names, timeout]) => {
    for (let i = 0; i < names.length; i += 15) {
      const batch = names.slice(i, i + 15);
      const ws = new WebSocket(`ws://${location.host}/ws`);
      await new Promise((resolve, reject) => {
        let left = batch.length;
        setTimeout(() => reject(new Error(`rooms ${batch} not all created within ${timeout} ms`)), timeout);
        ws.onopen = () => { for (const room of batch) ws.send(JSON.stringify({ type: 'join', room })); };
        ws.onmessage = (e) => {
          const ev = JSON.parse(e.data);
          if (ev.type === 'error') reject(new Error(`creating rooms: ${e.data}`));
          if (ev.type === 'room' && batch.includes(ev.room) && --left === 0) resolve();
        };
      });
      ws.close();
    }
  }, [names, TIMEOUT]);
}

/** Opens a bare connection that stays open (in the blank page `raw`, as `window.bare[nick]`),
 * takes `nick` and joins `rooms`; resolves once the server has confirmed all of it. */
async function bareJoin(raw, nick, rooms) {
  await raw.evaluate(([nick, rooms, timeout]) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    (window.bare ||= {})[nick] = ws;
    setTimeout(() => reject(new Error(`${nick} not in ${rooms} within ${timeout} ms`)), timeout);
    let left = rooms.length;
    ws.onmessage = (e) => {
      const ev = JSON.parse(e.data);
      if (ev.type === 'error') reject(new Error(`${nick}: ${e.data}`));
      if (ev.type === 'welcome') ws.send(JSON.stringify({ type: 'nick', nick }));
      if (ev.type === 'nick' && ev.nick === nick) for (const room of rooms) ws.send(JSON.stringify({ type: 'join', room }));
      if (ev.type === 'room' && rooms.includes(ev.room) && --left === 0) resolve();
    };
  }), [nick, rooms, TIMEOUT]);
}

/** Sends `say`/`direct` commands from the bare connection `nick`, and resolves once each has
 * come back to it (so the server has delivered them). */
async function bareSend(raw, nick, cmds) {
  await raw.evaluate(([nick, cmds, timeout]) => new Promise((resolve, reject) => {
    const ws = window.bare[nick];
    let left = cmds.length;
    setTimeout(() => reject(new Error(`${nick}: ${left} of ${cmds.length} not back within ${timeout} ms`)), timeout);
    ws.onmessage = (e) => {
      const ev = JSON.parse(e.data);
      if (ev.type === 'error') reject(new Error(`${nick}: ${e.data}`));
      if ((ev.type === 'message' || ev.type === 'direct') && ev.from === nick && --left === 0) resolve();
    };
    for (const c of cmds) ws.send(JSON.stringify(c));
  }), [nick, cmds, TIMEOUT]);
}
const says = (room, ...texts) => texts.map((text) => ({ type: 'say', room, text }));

/** The server's rooms as `{name, members}`, every page of the `rooms` reply. */
async function serverRooms(raw) {
  return raw.evaluate((timeout) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    const rooms = [];
    setTimeout(() => reject(new Error(`no complete rooms reply within ${timeout} ms`)), timeout);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'rooms' }));
    ws.onmessage = (e) => {
      const ev = JSON.parse(e.data);
      if (ev.type === 'error') reject(new Error(`listing rooms: ${e.data}`));
      if (ev.type !== 'rooms') return;
      rooms.push(...ev.rooms);
      if (ev.next != null) {
        ws.send(JSON.stringify({ type: 'rooms', offset: ev.next }));
      } else {
        ws.close();
        resolve(rooms);
      }
    };
  }), TIMEOUT);
}

/** The TLS server's count of handshakes that failed because the client did not speak TLS,
 * from /metrics (asked over https, trusting `ca`). */
async function notTlsFailures(url, ca) {
  const text = await (await get(`${url}metrics`, { ca })).text();
  const m = text.match(/^smolchat_tls_handshake_failures_total\{cause="not_tls"\} (\d+)$/m);
  check(m, 'no smolchat_tls_handshake_failures_total{cause="not_tls"} in /metrics');
  return Number(m[1]);
}

/** The server's count of frames refused by the rate limit, from /metrics. */
async function rateLimited(url) {
  const text = await (await fetch(`${url}metrics`)).text();
  const m = text.match(/^smolchat_rate_limited_total (\d+)$/m);
  check(m, 'no smolchat_rate_limited_total in /metrics');
  return Number(m[1]);
}

const roomList = (page) => page.locator('#room-list .conv').evaluateAll((els) => els.map((e) => e.dataset.view));

/** Waits until the page's room list (the rooms it has joined) is exactly `rooms`. */
async function waitRoomList(page, rooms) {
  const want = rooms.map((r) => `r:${r}`).sort();
  try {
    await page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#room-list .conv')].map((e) => e.dataset.view).sort()) === JSON.stringify(w),
      want,
    );
  } catch (e) {
    const have = await roomList(page);
    throw new Error(`the room list lacks ${want.filter((k) => !have.includes(k)).join(' ') || 'nothing'} and has extra ${have.filter((k) => !want.includes(k)).join(' ') || 'nothing'}: ${e.message}`);
  }
}

/** Fails if the page shows a `rate_limited` error, in the banner or in a view. */
async function checkNotRateLimited(page, name) {
  const banner = (await page.locator('#error').isVisible()) ? await page.locator('#error').textContent() : '';
  check(!/rate_limited/.test(banner), `page ${name} shows the error ${JSON.stringify(banner)}`);
  const lines = await page.locator('.log .err').filter({ hasText: 'rate_limited' }).count();
  check(lines === 0, `page ${name} shows ${lines} rate_limited error line(s)`);
}

/** Checks `GET url`: one self-contained page, with a CSP that allows only its own inline
 * script and style, by hash. Returns the page's text. */
async function checkPageResponse(url, { ca } = {}) {
  const r = await get(url, { ca });
  const body = await r.text();
  const csp = r.headers.get('content-security-policy') || '';
  check(r.status === 200, `GET / answered ${r.status}`);
  check(Buffer.byteLength(body) < 43_900, `the page is ${Buffer.byteLength(body)} bytes; the limit is 43,900`);
  check(!csp.includes('unsafe-inline'), `the CSP allows unsafe-inline: ${csp}`);
  check(/default-src 'none'/.test(csp) && /connect-src 'self'/.test(csp), `unexpected CSP: ${csp}`);
  for (const tag of ['script', 'style']) {
    const inline = body.match(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`));
    check(inline, `no inline <${tag}> in the page`);
    const hash = createHash('sha256').update(inline[1], 'utf8').digest('base64');
    check(csp.includes(`${tag}-src 'sha256-${hash}'`), `the CSP does not carry the <${tag}>'s hash ${hash}: ${csp}`);
  }
  check((r.headers.get('cache-control') || '').includes('no-cache'), 'missing Cache-Control: no-cache');
  check(r.headers.get('x-content-type-options') === 'nosniff', 'missing X-Content-Type-Options: nosniff');
  check(!/\b(src|href)=["']?(https?:)?\/\//i.test(body), 'the page refers to an external resource');
  check(!/innerHTML|outerHTML|insertAdjacentHTML|document\.write/.test(body), 'the page uses an HTML-parsing sink');
  return body;
}

// Raw mode's page (web/raw.html): a log of lines (`#log > div`, connection notes with class
// `note`) and one input.

/** The lines the raw page shows, without its connection notes. */
const rawLines = (page) => page.locator('#log > div:not(.note)').allTextContents();
const rawNotes = (page) => page.locator('#log > div.note').allTextContents();

/** Waits until the raw page shows exactly the lines `want`, in that order. */
async function waitLines(page, name, want) {
  try {
    await page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#log > div:not(.note)')].map((d) => d.textContent)) === JSON.stringify(w),
      want,
    );
  } catch (e) {
    throw new Error(`page ${name} shows ${JSON.stringify(await rawLines(page))}, expected ${JSON.stringify(want)}: ${e.message}`);
  }
}

/** Waits until the raw page has said `connected to URL` `n` times (n - 1 reconnections). */
async function waitConnected(page, name, url, n = 1) {
  const note = `connected to ${url}`;
  try {
    await page.waitForFunction(
      ([t, n]) => [...document.querySelectorAll('#log > div.note')].filter((d) => d.textContent === t).length >= n,
      [note, n],
    );
  } catch (e) {
    throw new Error(`page ${name} did not say ${JSON.stringify(note)} ${n} time(s); its notes: ${JSON.stringify(await rawNotes(page))}: ${e.message}`);
  }
}

/** Types `text` into the raw page's input and presses Enter, which sends it. */
async function typeLine(page, text) {
  const input = page.getByLabel('message');
  await input.fill(text);
  await input.press('Enter');
  check((await input.inputValue()) === '', `the input was not cleared after sending ${JSON.stringify(text)}`);
}

/** A WebSocket client that is not the raw page: connects to `url`, sends `frames` (`{text}` or
 * `{bytes: [...]}`), collects what the server sends it until as many frames have come back,
 * and closes. Self-contained, to run in Node or, by `evaluate`, in a page. */
function exchange([url, frames, timeout]) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const got = [];
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error(`${url}: ${got.length} of ${frames.length} frames back within ${timeout} ms`));
    }, timeout);
    ws.onerror = () => { clearTimeout(timer); reject(new Error(`${url}: the connection failed`)); };
    ws.onopen = () => {
      for (const f of frames) ws.send('text' in f ? f.text : new Uint8Array(f.bytes));
    };
    ws.onmessage = (e) => {
      got.push(typeof e.data === 'string' ? { text: e.data } : { bytes: [...new Uint8Array(e.data)] });
      if (got.length === frames.length) {
        clearTimeout(timer);
        ws.onerror = null;
        ws.close();
        resolve(got);
      }
    };
  });
}

/** Runs `exchange` with Node's own WebSocket where this Node has one (22 and later; 20 with
 * --experimental-websocket), else in `blank`, a page at the server's origin that is not the
 * raw page (like the bare protocol connections above). */
async function bareClient(blank, url, frames) {
  if (typeof globalThis.WebSocket === 'function') return { via: 'Node', got: await exchange([url, frames, TIMEOUT]) };
  return { via: 'a blank page', got: await blank.evaluate(exchange, [url, frames, TIMEOUT]) };
}

// ---------------------------------------------------------------- the test

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  for (const f of ['server.log', 'server-raw.log', 'server-tls.log', 'server-auth.log', 'server-signin.log']) fs.writeFileSync(path.join(OUT, f), '');
  for (const f of fs.readdirSync(OUT)) if (f.startsWith('failure-')) fs.rmSync(path.join(OUT, f));
  check(fs.existsSync(BIN), `no server binary at ${BIN}: run \`cargo build\` first, or set SMOLCHAT_BIN`);
  check(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
  const version = execFileSync(BIN, ['--version'], { encoding: 'utf8' }).trim();
  check(/\btls\b/.test(version), `${BIN} was built without the tls feature (${version}): run \`cargo build --features tls\``);

  const port = await freePort();
  const server = new Server(port);
  await server.start();
  const proxy = new Proxy(port);
  const proxyPort = await proxy.listen();
  // Raw mode (--protocol raw) is a second server, started for its own checks after the rest.
  const rawPort = await freePort();
  const rawServer = new Server(rawPort, { args: ['--protocol', 'raw'], log: 'server-raw.log' });
  // TLS (--tls-cert/--tls-key, feature `tls`) is a third server, started after raw mode's checks.
  const tls = makeCert();
  const tlsPort = await freePort();
  const tlsServer = new Server(tlsPort, { args: ['--tls-cert', tls.cert, '--tls-key', tls.key], log: 'server-tls.log', ca: tls.pem });
  // Tokens (--auth-secret-file --auth optional) and the HTTP API (--api-key-file): a fourth
  // server, started for its own checks after TLS's.
  const secretFile = path.join(OUT, 'auth-secret');
  const keyFile = path.join(OUT, 'api-key');
  fs.writeFileSync(secretFile, AUTH_SECRET + '\n');
  fs.writeFileSync(keyFile, API_KEY + '\n');
  const authPort = await freePort();
  const authServer = new Server(authPort, {
    args: ['--auth-secret-file', secretFile, '--auth', 'optional', '--api-key-file', keyFile],
    log: 'server-auth.log',
  });
  // Tokens required (no --auth optional): a fifth server, for the page without a token.
  const signInPort = await freePort();
  const signInServer = new Server(signInPort, { args: ['--auth-secret-file', secretFile], log: 'server-signin.log' });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
  const pages = {};
  try {
    // Separate contexts: each page has its own localStorage, like two people.
    const a = await (await browser.newContext({ viewport: { width: 1200, height: 760 } })).newPage();
    const b = await (await browser.newContext({ viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 })).newPage();
    Object.assign(pages, { a, b });
    watch(a, 'A');
    watch(b, 'B');
    const direct = `http://127.0.0.1:${port}/`;
    const viaProxy = `http://127.0.0.1:${proxyPort}/`;

    await step('GET / serves one self-contained page with a hash-based CSP', async () => {
      await checkPageResponse(direct);
    });

    await step('both pages load and connect (A direct, B phone-sized through a proxy)', async () => {
      await a.goto(direct);
      await b.goto(viaProxy);
      await waitStatus(a, 'online');
      await waitStatus(b, 'online');
      await log(a, 'r:lobby').waitFor();
      await log(b, 'r:lobby').waitFor();
      await a.keyboard.press('Tab');
      check(await a.evaluate(() => document.activeElement.id === 'nick'), 'the first Tab stop is not the nickname field');
    });

    await step('nicknames are set, shown and remembered', async () => {
      for (const [page, nick] of [[a, 'alice'], [b, 'bob']]) {
        const field = page.getByLabel('Nickname');
        await field.fill(nick);
        await field.press('Enter');
        await waitStatus(page, 'online', `Connected as ${nick}`);
        await page.waitForFunction((n) => localStorage.getItem('smolchat.nick') === n, nick);
      }
      await waitMembers(a, ['alice', 'bob'], []);
    });

    await step('two pages chat in lobby', async () => {
      await say(a, 'r:lobby', 'hello from alice');
      const msg = await seeMessage(b, 'r:lobby', 'hello from alice', 'alice');
      check((await msg.first().locator('time').count()) === 1, 'a message shows no time');
      await say(b, 'r:lobby', 'hi alice, bob here');
      await seeMessage(a, 'r:lobby', 'hi alice, bob here', 'bob');
    });

    await step("a second room's messages stay in that room", async () => {
      const field = a.getByLabel('Join a room');
      await field.fill('secret');
      await field.press('Enter');
      await log(a, 'r:secret').waitFor({ state: 'visible' });
      await a.waitForFunction(() => document.getElementById('view-title').textContent === '#secret');
      await waitMembers(a, ['alice'], ['bob']);
      await say(a, 'r:secret', 'the secret plan');
      await openView(a, 'r:lobby');
      await say(a, 'r:lobby', 'back in lobby');
      // Events reach B in the order the server handled them: had B been sent the secret
      // message, it would be there before this one.
      await seeMessage(b, 'r:lobby', 'back in lobby', 'alice');
      check((await b.locator('.log[data-view="r:secret"]').count()) === 0, 'B has a view of #secret');
      check(!(await b.locator('body').textContent()).includes('the secret plan'), "B shows #secret's message");
    });

    await step("a rename shows in the other page's member list", async () => {
      const field = b.getByLabel('Nickname');
      await field.fill('bobby');
      await field.press('Enter');
      await waitStatus(b, 'online', 'Connected as bobby');
      await waitMembers(a, ['alice', 'bobby'], ['bob']);
      await log(a, 'r:lobby').getByText('bob is now known as bobby', { exact: true }).waitFor();
      // On the phone the member list is a drawer; Escape closes it.
      await b.locator('#members-toggle').click();
      await waitMembers(b, ['alice', 'bobby'], ['bob']);
      await b.locator('#member-list').waitFor({ state: 'visible' });
      await b.screenshot({ path: path.join(OUT, 'b-members-drawer.png') });
      await b.keyboard.press('Escape');
      await b.locator('#member-list').waitFor({ state: 'hidden' });
    });

    await step('a direct message arrives in a DM view', async () => {
      await a.locator('#member-list [data-nick="bobby"]').click();
      await a.waitForFunction(() => document.getElementById('view-title').textContent === 'Direct: bobby');
      await say(a, 'd:bobby', 'psst, bobby');
      await seeMessage(b, 'd:alice', 'psst, bobby', 'alice');
      check(!(await log(b, 'd:alice').isVisible()), "the DM opened by itself on B's screen");
      await b.locator('#nav-badge', { hasText: '1' }).waitFor(); // unread count on the phone's menu
      await openNav(b);
      await b.locator('.conv[data-view="d:alice"] .badge', { hasText: '1' }).waitFor();
      await b.screenshot({ path: path.join(OUT, 'b-rooms-drawer.png') });
      await b.locator('.conv[data-view="d:alice"]').click();
      await log(b, 'd:alice').waitFor({ state: 'visible' });
      await b.locator('#nav-badge').waitFor({ state: 'hidden' });
      await say(b, 'd:alice', 'got it');
      await seeMessage(a, 'd:bobby', 'got it', 'bobby');
      await a.screenshot({ path: path.join(OUT, 'a-direct.png') });
      await openView(a, 'r:lobby');
      await openView(b, 'r:lobby');
    });

    await step('markup in a message is shown as text and runs nothing', async () => {
      const evil = '<img src=x onerror=alert(1)>';
      const count = (page) => log(page, 'r:lobby').locator('.msg').count();
      const before = { a: await count(a), b: await count(b) };
      const input = a.getByLabel(/^Message/);
      await input.fill(evil);
      await input.press('Enter');
      for (const [name, page] of [['A', a], ['B', b]]) {
        // Wait for the message itself, whatever it turned into, then look at it.
        await log(page, 'r:lobby').locator('.msg').nth(before[name.toLowerCase()]).waitFor();
        const imgs = await page.evaluate(() => document.getElementsByTagName('img').length);
        check(imgs === 0, `page ${name} created ${imgs} img element(s) from a message`);
        const last = log(page, 'r:lobby').locator('.msg').last();
        const text = await last.locator('.text').textContent();
        check(text === evil, `page ${name} shows the message as ${JSON.stringify(text)}`);
        check((await last.locator('.text *').count()) === 0, `page ${name} parsed the message into elements`);
      }
    });

    await step('after a dropped connection B reconnects, catches up, and shows nothing twice', async () => {
      proxy.pause();
      await waitStatus(b, 'offline');
      await say(a, 'r:lobby', 'while bobby was away');
      proxy.resume();
      await waitStatus(b, 'online', 'Connected as bobby');
      await seeMessage(b, 'r:lobby', 'while bobby was away', 'alice');
      // B rejoined lobby with its cursor after the server's automatic join replayed the
      // history: both replays overlap, and each message must still appear once. B's own
      // message is answered after both replays, so once it is back they are all in.
      await say(b, 'r:lobby', 'bobby is back');
      for (const text of ['hello from alice', 'back in lobby', '<img src=x onerror=alert(1)>', 'while bobby was away']) {
        const n = await countMessages(b, 'r:lobby', text);
        check(n === 1, `B shows ${JSON.stringify(text)} ${n} times`);
      }
      check((await log(b, 'r:lobby').locator('.missed').count()) === 0, 'B says messages were missed, but none were');
      await waitMembers(a, ['alice', 'bobby'], []);
    });

    await step('after a server restart both pages reconnect by themselves and catch up', async () => {
      await server.stop();
      await waitStatus(a, 'offline');
      await waitStatus(b, 'offline');
      await a.screenshot({ path: path.join(OUT, 'a-offline.png') });
      await server.start(); // same port
      await waitStatus(a, 'online', 'Connected as alice');
      await waitStatus(b, 'online', 'Connected as bobby');
      // History died with the old server, so the rooms' epochs changed: the pages must say so.
      await log(b, 'r:lobby').locator('.missed').first().waitFor();
      await log(a, 'r:lobby').locator('.missed').first().waitFor();
      await log(a, 'r:secret').locator('.missed').first().waitFor({ state: 'attached' });
      check(/missed/i.test(await log(b, 'r:lobby').locator('.missed').first().textContent()), 'the notice does not say what happened');
      check((await log(b, 'r:lobby').locator('.missed').count()) === 1, 'B shows the notice more than once');
      await say(a, 'r:lobby', 'after the restart');
      await seeMessage(b, 'r:lobby', 'after the restart', 'alice');
      await say(b, 'r:lobby', 'welcome back');
      await seeMessage(a, 'r:lobby', 'welcome back', 'bobby');
      // A is back in #secret too (saying something there needs membership).
      await openView(a, 'r:secret');
      await say(a, 'r:secret', 'still secret');
      await openView(a, 'r:lobby');
      await waitMembers(a, ['alice', 'bobby'], []);
      for (const text of ['hello from alice', 'after the restart', 'welcome back']) {
        const n = await countMessages(b, 'r:lobby', text);
        check(n === 1, `B shows ${JSON.stringify(text)} ${n} times`);
      }
      check(!(await b.locator('body').textContent()).includes('still secret'), "B shows #secret's message");
      check((await a.locator('#error').isHidden()) && (await b.locator('#error').isHidden()), 'an error is shown after reconnecting');
    });

    await step('a reload keeps the nickname and the rooms, and shows nothing twice', async () => {
      await a.reload();
      await waitStatus(a, 'online', 'Connected as alice');
      await log(a, 'r:secret').waitFor({ state: 'attached' });
      // The server's automatic join and the page's own join of lobby both replay its history.
      await say(a, 'r:lobby', 'alice reloaded');
      await seeMessage(b, 'r:lobby', 'alice reloaded', 'alice');
      for (const text of ['after the restart', 'welcome back']) {
        const n = await countMessages(a, 'r:lobby', text);
        check(n === 1, `A shows ${JSON.stringify(text)} ${n} times after a reload`);
      }
      check((await countMessages(a, 'r:secret', 'still secret')) === 1, "A does not show #secret's history once");
    });

    await step('the CSP blocks inline event handlers', async () => {
      expectCspViolation = true;
      const result = await a.evaluate(() => new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve({ directive: e.effectiveDirective, ran: 'pwned' in window }), { once: true });
        const d = document.createElement('div');
        d.setAttribute('onclick', 'window.pwned = 1');
        document.body.append(d);
        d.click();
        d.remove();
      }));
      expectCspViolation = false;
      check(!result.ran && !(await a.evaluate(() => 'pwned' in window)), 'an inline event handler ran');
      check(/script-src/.test(result.directive), `unexpected violated directive ${result.directive}`);
    });

    await step('the error banner shows server errors', async () => {
      const field = a.getByLabel('Nickname');
      await field.fill('BOBBY'); // taken, ignoring case
      await field.press('Enter');
      await a.locator('#error-code', { hasText: 'nick_taken' }).waitFor();
      await a.locator('#error-close').click();
      await a.locator('#error').waitFor({ state: 'hidden' });
      await waitStatus(a, 'online', 'Connected as alice');
      check(await a.evaluate(() => localStorage.getItem('smolchat.nick') === 'alice'), 'a refused nick was remembered');
    });

    // C, a third person (desktop size, through the proxy), is in more rooms than the server's
    // rate-limit burst (20) lets a client join at once.
    const many = Array.from({ length: 25 }, (_, i) => `many-${String(i + 1).padStart(2, '0')}`);
    const raw = await browser.newPage();
    await raw.goto(`${direct}healthz`);
    const c = await (await browser.newContext({ viewport: { width: 1200, height: 760 } })).newPage();
    pages.c = c;
    watch(c, 'C');

    await step('a user joins 25 rooms in one go; the page paces them under the rate limit', async () => {
      await c.goto(viaProxy);
      await waitStatus(c, 'online');
      const nick = c.getByLabel('Nickname');
      await nick.fill('carol');
      await nick.press('Enter');
      await waitStatus(c, 'online', 'Connected as carol');
      // Faster than anyone types: 25 joins submitted in one task.
      await c.evaluate((rooms) => {
        for (const room of rooms) {
          document.getElementById('join-room').value = room;
          document.getElementById('join-form').requestSubmit();
        }
      }, many);
      await waitRoomList(c, ['lobby', ...many]);
      await checkNotRateLimited(c, 'C');
    });

    await step('after a dropped connection the user in 25 rooms is back in all of them', async () => {
      proxy.pause();
      await waitStatus(c, 'offline');
      proxy.resume();
      await waitStatus(c, 'online', 'Connected as carol');
      // The page sends its rejoins one at a time and its messages after them, so once this
      // line is back every rejoin has been answered.
      await openView(c, 'r:many-25');
      const notBack = await say(c, 'r:many-25', 'carol is back').then(() => null, (e) => e);
      // The room list keeps rooms across a reconnect: ask the server who is where.
      const rooms = await serverRooms(raw);
      const lost = many.filter((name) => !rooms.some((r) => r.name === name && r.members === 1));
      check(!lost.length, `C is not back in ${lost.join(' ')} (the server says ${JSON.stringify(rooms.filter((r) => lost.includes(r.name)))})`);
      if (notBack) throw notBack;
      await waitRoomList(c, ['lobby', ...many]);
      await checkNotRateLimited(c, 'C');
      await waitStatus(b, 'online', 'Connected as bobby'); // B was cut too
    });

    await step('after a reload the page lists all 25 rooms again', async () => {
      await c.reload();
      await waitStatus(c, 'online', 'Connected as carol');
      // A reloaded page shows a room only once the server has confirmed the join.
      await waitRoomList(c, ['lobby', ...many]);
      await openView(c, 'r:many-01');
      await say(c, 'r:many-01', 'carol reloaded');
      await checkNotRateLimited(c, 'C');
      await c.screenshot({ path: path.join(OUT, 'c-many-rooms.png') });
    });

    await step('joins the server refuses with rate_limited are sent again until they succeed', async () => {
      // D is told a rate limit 100 times the server's, so it does not pace itself enough and
      // the server refuses some of its joins.
      const d = await (await browser.newContext({ viewport: { width: 1200, height: 760 } })).newPage();
      pages.d = d;
      watch(d, 'D');
      await d.addInitScript(() => {
        const data = Object.getOwnPropertyDescriptor(MessageEvent.prototype, 'data');
        Object.defineProperty(MessageEvent.prototype, 'data', {
          get() {
            const text = data.get.call(this);
            return typeof text === 'string' && text.startsWith('{"type":"welcome"')
              ? text.replace('"rate_limit":10,', '"rate_limit":1000,').replace('"rate_burst":20,', '"rate_burst":2000,')
              : text;
          },
        });
      });
      await d.goto(direct);
      await waitStatus(d, 'online');
      const refusedBefore = await rateLimited(direct);
      await d.evaluate((rooms) => {
        for (const room of rooms) {
          document.getElementById('join-room').value = room;
          document.getElementById('join-form').requestSubmit();
        }
      }, many);
      await waitRoomList(d, ['lobby', ...many]);
      await checkNotRateLimited(d, 'D');
      const refused = (await rateLimited(direct)) - refusedBefore;
      check(refused > 0, "the server refused none of D's frames (was its welcome rewritten?): the retries were not tested");
      await d.context().close();
      delete pages.d;
    });

    await step('the room browser lists every room, more than one page of them', async () => {
      const made = Array.from({ length: 60 }, (_, i) => `browse-${String(i + 1).padStart(2, '0')}`);
      await createRooms(raw, made);
      const all = (await serverRooms(raw)).map((r) => r.name);
      check(all.length > 50, `the server has only ${all.length} rooms`);
      // The browser lists the rooms the page is not in; B is only in lobby.
      const want = all.filter((name) => name !== 'lobby').sort();
      check(made.concat(many).every((name) => want.includes(name)), `the server lacks rooms: ${all}`);
      await openNav(b);
      // Asking twice starts the list again: no page of the first listing may get into it.
      await b.locator('#browse').click();
      await b.locator('#browse').click();
      const listed = () => b.locator('#browse-list .conv .name').evaluateAll((els) => els.map((e) => e.textContent));
      try {
        await b.waitForFunction((n) => document.querySelectorAll('#browse-list .conv').length === n, want.length);
      } catch (e) {
        throw new Error(`the room browser lists ${(await listed()).length} rooms, not ${want.length}: ${e.message}`);
      }
      const names = await listed();
      check(JSON.stringify(names) === JSON.stringify(want.map((n) => `#${n}`)), `the room browser lists ${names.join(' ')}`);
      check((await b.locator('#browse-list > li.hint').count()) === 0, 'the room browser says there are more rooms');
      await b.screenshot({ path: path.join(OUT, 'b-browse.png') });
      // Joining a listed room works as before.
      await b.locator('#browse-list .conv', { hasText: '#browse-60' }).click();
      await log(b, 'r:browse-60').waitFor({ state: 'visible' });
      await openView(b, 'r:lobby');
      await checkNotRateLimited(b, 'B');
    });

    await step('screenshots saved under target/browser/', async () => {
      await a.screenshot({ path: path.join(OUT, 'a.png') });
      await b.screenshot({ path: path.join(OUT, 'b.png') });
      await a.emulateMedia({ colorScheme: 'dark' });
      await a.screenshot({ path: path.join(OUT, 'a-dark.png') });
    });

    // ------------------------------------------------------------ what chat users expect
    // E (erin) is in #looks with bare connections that stay open (zed, amy and nine more).
    // Its init script stands in for the Notification API (it records what the page shows
    // and grants permission when asked), lets the test say whether the tab is hidden (a
    // headless page is always visible), and dates messages whose text starts with "[old]"
    // two days back, so that day separators can be seen.
    const e = await (await browser.newContext({ viewport: { width: 1000, height: 560 } })).newPage();
    pages.e = e;
    watch(e, 'E');
    await e.addInitScript(() => {
      window.notes = [];
      let permission = 'default';
      window.Notification = function Notification(title, options) { window.notes.push({ title, body: options.body }); this.close = () => {}; };
      Object.defineProperty(window.Notification, 'permission', { get: () => permission });
      window.Notification.requestPermission = async () => (permission = 'granted');
      window.hiddenTab = false;
      Object.defineProperty(Document.prototype, 'hidden', { get: () => window.hiddenTab });
      Object.defineProperty(Document.prototype, 'visibilityState', { get: () => (window.hiddenTab ? 'hidden' : 'visible') });
      const data = Object.getOwnPropertyDescriptor(MessageEvent.prototype, 'data');
      Object.defineProperty(MessageEvent.prototype, 'data', {
        get() {
          const text = data.get.call(this);
          if (typeof text !== 'string' || !text.includes('"text":"[old]')) return text;
          const ev = JSON.parse(text);
          ev.ts -= 2 * 86_400_000;
          return JSON.stringify(ev);
        },
      });
    });
    const setHidden = (hidden) => e.evaluate((h) => { window.hiddenTab = h; document.dispatchEvent(new Event('visibilitychange')); }, hidden);
    const notes = () => e.evaluate(() => window.notes);
    const looks = log(e, 'r:looks');
    const last = (text) => looks.locator('.msg').filter({ has: e.locator('.text').getByText(text, { exact: true }) }).last();

    await step('E joins #looks with others (bare connections)', async () => {
      await e.goto(direct);
      await waitStatus(e, 'online');
      await e.getByLabel('Nickname').fill('erin');
      await e.getByLabel('Nickname').press('Enter');
      await waitStatus(e, 'online', 'Connected as erin');
      await e.getByLabel('Join a room').fill('looks');
      await e.getByLabel('Join a room').press('Enter');
      await looks.waitFor({ state: 'visible' });
      await bareJoin(raw, 'zed', ['looks']);
      await bareJoin(raw, 'amy', ['looks']);
      await waitMembers(e, ['erin', 'zed', 'amy'], []);
    });

    await step('http(s) links become links that open apart (noopener noreferrer); javascript: and markup do not', async () => {
      const text = 'docs: https://example.com/a_(b)?q=1&r=2. Not javascript:alert(1), JAVASCRIPT://x.org/%0aalert(1), data:text/html,<b>x</b> or <a href="x">y</a>';
      await bareSend(raw, 'zed', says('looks', text));
      const msg = await seeMessage(e, 'r:looks', text, 'zed');
      const links = await msg.first().locator('.text *').evaluateAll((els) => els.map((a) => ({ tag: a.tagName, href: a.getAttribute('href'), text: a.textContent, rel: a.rel, target: a.target })));
      check(JSON.stringify(links) === JSON.stringify([{ tag: 'A', href: 'https://example.com/a_(b)?q=1&r=2', text: 'https://example.com/a_(b)?q=1&r=2', rel: 'noopener noreferrer', target: '_blank' }]),
        `the message's elements are ${JSON.stringify(links)}, expected one https link`);
      check((await e.locator('a[href^="javascript" i], a[href^="data" i]').count()) === 0, 'a javascript: or data: link was made clickable');
    });

    await step('mentions of my nick are marked; opt-in notifications for mentions and DMs while the tab is hidden', async () => {
      // Before opting in: no notification, even hidden.
      await setHidden(true);
      await bareSend(raw, 'zed', says('looks', 'erin, before you opted in'));
      await seeMessage(e, 'r:looks', 'erin, before you opted in');
      await setHidden(false);
      check((await notes()).length === 0, 'a notification was shown before opting in');
      await e.locator('#notify').click();
      await e.locator('#notify[aria-pressed="true"]', { hasText: 'on' }).waitFor();
      check(await e.evaluate(() => localStorage.getItem('smolchat.notify') === '1'), 'the choice is not remembered');
      // Visible tab: marked, not notified.
      await bareSend(raw, 'zed', says('looks', 'hey @erin, look', 'no mention: erinaceous, erin-x and xerin'));
      await seeMessage(e, 'r:looks', 'no mention: erinaceous, erin-x and xerin');
      check(await last('hey @erin, look').evaluate((li) => li.classList.contains('mention') && li.querySelector('mark').textContent === '@erin'), 'the mention is not marked');
      check((await last('no mention: erinaceous, erin-x and xerin').locator('mark').count()) === 0, 'a longer word was marked as a mention');
      check(!(await last('no mention: erinaceous, erin-x and xerin').evaluate((li) => li.classList.contains('mention'))), 'a message without a mention is marked');
      // Hidden tab: a mention and a direct message notify, other messages do not.
      await setHidden(true);
      await bareSend(raw, 'zed', [...says('looks', 'ERIN: ping while away', 'nothing for erin2'), { type: 'direct', to: 'erin', text: 'a secret for erin' }]);
      await e.waitForFunction(() => window.notes.length >= 2);
      await seeMessage(e, 'd:zed', 'a secret for erin', 'zed');
      const got = await notes();
      check(JSON.stringify(got) === JSON.stringify([{ title: 'zed in #looks', body: 'ERIN: ping while away' }, { title: 'zed', body: 'a secret for erin' }]), `notifications: ${JSON.stringify(got)}`);
      await setHidden(false);
      await e.screenshot({ path: path.join(OUT, 'e-mentions.png') });
    });

    await step('scrolled up, new messages get a marker and a jump-to-latest button', async () => {
      const fill = Array.from({ length: 12 }, (_, i) => `fill ${i + 1}\nsecond line\nthird line`);
      await bareSend(raw, 'amy', says('looks', ...fill));
      await seeMessage(e, 'r:looks', fill[11]);
      const atEnd = () => looks.evaluate((l) => l.scrollHeight - l.scrollTop - l.clientHeight < 2);
      check(await atEnd(), 'the log did not follow new messages');
      check(await e.locator('#jump').isHidden(), 'the jump button shows at the bottom');
      await looks.evaluate((l) => { l.scrollTop = 0; });
      await bareSend(raw, 'zed', says('looks', 'while scrolled up', 'still scrolled up'));
      await e.locator('#jump', { hasText: '2 new messages' }).waitFor();
      check(await looks.evaluate((l) => l.scrollTop === 0), 'the log moved while scrolled up');
      check(await looks.locator('.new').evaluate((m) => m.textContent === 'New messages' && m.nextElementSibling.querySelector('.text').textContent === 'while scrolled up'),
        'the marker is not just before the first new message');
      await e.screenshot({ path: path.join(OUT, 'e-new-messages.png') });
      await e.locator('#jump').click();
      await e.locator('#jump').waitFor({ state: 'hidden' });
      check(await atEnd(), 'the jump button did not scroll to the latest message');
      await bareSend(raw, 'zed', says('looks', 'seen at the bottom'));
      await seeMessage(e, 'r:looks', 'seen at the bottom');
      check(await atEnd() && (await e.locator('#jump').isHidden()) && (await looks.locator('.new').count()) === 1, 'a message seen at the bottom counts as new');
    });

    await step('Shift+Enter starts a new line, Enter sends', async () => {
      const box = e.getByLabel(/^Message/);
      await box.click();
      await box.pressSequentially('first line');
      await box.press('Shift+Enter');
      await box.pressSequentially('second line');
      check((await box.inputValue()) === 'first line\nsecond line', `the box holds ${JSON.stringify(await box.inputValue())}`);
      await box.press('Enter');
      await seeMessage(e, 'r:looks', 'first line\nsecond line', 'erin');
      check((await box.inputValue()) === '', 'the box was not cleared');
      check(await last('first line\nsecond line').evaluate((li) => li.classList.contains('mine')), 'my message is not highlighted');
    });

    await step('day separators; the time shows once per run of messages from one sender', async () => {
      await bareSend(raw, 'zed', says('looks', '[old] two days ago', 'today again', 'run 2', 'run 3'));
      await bareSend(raw, 'amy', says('looks', 'amy breaks the run'));
      await seeMessage(e, 'r:looks', 'amy breaks the run');
      const days = await e.evaluate(() => [Date.now() - 2 * 86_400_000, Date.now()].map((t) => new Date(t).toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' })));
      const before = (text) => last(text).evaluate((li) => li.previousElementSibling.className + ' ' + li.previousElementSibling.textContent);
      check((await before('[old] two days ago')) === `day ${days[0]}`, `before the old message: ${await before('[old] two days ago')}`);
      check((await before('today again')) === `day ${days[1]}`, `before today's message: ${await before('today again')}`);
      // Today's messages, the old one, today's again: one separator each time the day changes.
      const separators = await looks.locator('.day').allTextContents();
      check(JSON.stringify(separators) === JSON.stringify([days[1], days[0], days[1]]), `the day separators are ${JSON.stringify(separators)}`);
      for (const [text, shown] of [['today again', true], ['run 2', false], ['run 3', false], ['amy breaks the run', true]]) {
        check((await last(text).locator('time').isVisible()) === shown, `the time of ${JSON.stringify(text)} is ${shown ? 'hidden' : 'shown'}`);
      }
    });

    const others = ['yara', 'xena', 'walt', 'vic', 'uma', 'tom', 'sam', 'rob', 'quinn'];
    const colours = () => e.locator('#member-list [data-nick] > span:first-child').evaluateAll((els) => els.map((s) => getComputedStyle(s).color));
    const byName = (x, y) => (x.toLowerCase() < y.toLowerCase() ? -1 : 1);
    let order = [], painted = [];
    await step('12 people in view have 12 different colours; the member list is sorted', async () => {
      for (const nick of others) await bareJoin(raw, nick, ['looks']);
      await waitMembers(e, others, []);
      order = await memberNames(e);
      check(order.length === 12 && JSON.stringify(order) === JSON.stringify(order.slice().sort(byName)), `the member list is ${order}`);
      painted = await colours();
      check(new Set(painted).size === 12, `12 members show ${new Set(painted).size} colours`);
    });

    await step('after a reload: my messages keep their highlight, DMs come back, the member list keeps its order', async () => {
      await openView(e, 'd:zed');
      await say(e, 'd:zed', 'thanks zed');
      await e.reload();
      await waitStatus(e, 'online', 'Connected as erin');
      await openView(e, 'r:looks');
      await seeMessage(e, 'r:looks', 'amy breaks the run');
      check(await last('first line\nsecond line').evaluate((li) => li.classList.contains('mine')), 'my message lost its highlight');
      check((await looks.locator('.msg.mine').count()) === 1, 'a message of somebody else is highlighted as mine');
      await waitMembers(e, ['erin', ...others], []);
      check(JSON.stringify(await memberNames(e)) === JSON.stringify(order), `the member list is ${await memberNames(e)}, was ${order}`);
      check(JSON.stringify(await colours()) === JSON.stringify(painted), `the members' colours changed with the reload: ${await colours()}, were ${painted}`);
      await openView(e, 'd:zed');
      await seeMessage(e, 'd:zed', 'a secret for erin', 'zed');
      const mine = await seeMessage(e, 'd:zed', 'thanks zed', 'erin');
      check(await mine.first().evaluate((li) => li.classList.contains('mine')), 'my direct message lost its highlight');
      check((await countMessages(e, 'd:zed', 'a secret for erin')) === 1, 'the direct message shows twice');
      await e.screenshot({ path: path.join(OUT, 'e-reloaded.png') });
      await e.context().close();
      delete pages.e;
      await raw.evaluate(() => { for (const ws of Object.values(window.bare)) ws.close(); });
    });

    // ------------------------------------------------------------ raw mode (--protocol raw)
    // Every frame a client sends goes, as it is, to every client of its group, the sender
    // included, and nothing else is ever sent: each page must show exactly the lines sent to
    // its group, in order.
    await rawServer.start();
    const rawUrl = `http://127.0.0.1:${rawPort}/`;
    const wsDefault = `ws://127.0.0.1:${rawPort}/ws`;
    const wsOps = `ws://127.0.0.1:${rawPort}/ws/ops`;
    const rawPage = async (name, options) => {
      const context = await browser.newContext(options);
      // Every CSP violation the page reports, whatever the console shows.
      await context.addInitScript(() => {
        window.cspViolations = [];
        document.addEventListener('securitypolicyviolation', (e) => {
          window.cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || 'inline'}`);
        });
      });
      const page = await context.newPage();
      pages[name] = page;
      watch(page, name, { favicon: true });
      return page;
    };
    const ra = await rawPage('raw-A', { viewport: { width: 900, height: 600 } });
    const rb = await rawPage('raw-B', { viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const rc = await rawPage('raw-C', { viewport: { width: 900, height: 600 } });
    const rd = await rawPage('raw-D', { viewport: { width: 900, height: 600 } });
    const seen = { def: [], ops: [] }; // what each group's pages must show, in order

    await step('raw mode: GET / serves the raw page, self-contained, with a hash-based CSP', async () => {
      const body = await checkPageResponse(rawUrl);
      check(body.includes('id="log"') && body.includes('<title>smolchat (raw)</title>'), 'GET / in raw mode is not web/raw.html');
    });

    await step('raw mode: two pages on / show every line verbatim, the sender included, in order', async () => {
      await ra.goto(rawUrl);
      await rb.goto(rawUrl);
      await waitConnected(ra, 'raw-A', wsDefault);
      await waitConnected(rb, 'raw-B', wsDefault);
      // Sent one after the other without waiting: they must arrive in this order.
      const fromA = ['first', 'second', '  two spaces either side  ', 'héllo ✓ 日本語 🙂', 'third'];
      for (const text of fromA) await typeLine(ra, text);
      seen.def.push(...fromA);
      await waitLines(ra, 'raw-A', seen.def);
      await waitLines(rb, 'raw-B', seen.def);
      await typeLine(rb, 'from the phone');
      seen.def.push('from the phone');
      await waitLines(ra, 'raw-A', seen.def);
      await waitLines(rb, 'raw-B', seen.def);
    });

    await step('raw mode: markup in a line is shown as literal text and runs nothing', async () => {
      const marked = ['<b>x</b>', '<img src=x onerror=alert(1)>', '&lt;i&gt; &amp;'];
      for (const text of marked) await typeLine(rb, text);
      seen.def.push(...marked);
      for (const [name, page] of [['raw-A', ra], ['raw-B', rb]]) {
        await waitLines(page, name, seen.def);
        // Each line is a div holding only text.
        const made = await page.locator('#log *').evaluateAll((els) => els.filter((e) => e.tagName !== 'DIV' || e.children.length).map((e) => e.tagName));
        check(made.length === 0, `page ${name} made elements from lines: ${made}`);
      }
    });

    await step('raw mode: a page on /#ops sees its own group only', async () => {
      await rc.goto(`${rawUrl}#ops`);
      await rd.goto(`${rawUrl}#ops`);
      await waitConnected(rc, 'raw-C', wsOps);
      await waitConnected(rd, 'raw-D', wsOps);
      await typeLine(ra, 'default only');
      seen.def.push('default only');
      await waitLines(ra, 'raw-A', seen.def);
      await waitLines(rb, 'raw-B', seen.def);
      await typeLine(rc, 'ops only');
      seen.ops.push('ops only');
      await waitLines(rc, 'raw-C', seen.ops);
      await waitLines(rd, 'raw-D', seen.ops);
      await typeLine(rd, 'ops reply');
      seen.ops.push('ops reply');
      // A line sent after the others to each group: once it is in, anything leaked across
      // would be in too, and the exact lists would not match.
      await typeLine(rb, 'default again');
      seen.def.push('default again');
      for (const [name, page, want] of [['raw-A', ra, seen.def], ['raw-B', rb, seen.def], ['raw-C', rc, seen.ops], ['raw-D', rd, seen.ops]]) {
        await waitLines(page, name, want);
      }
    });

    await step('raw mode: frames from a non-browser client reach the pages; binary shows as [binary, N bytes]', async () => {
      const blank = await browser.newPage();
      await blank.goto(`${rawUrl}healthz`);
      const frames = [
        { text: 'from a bare client' },
        { bytes: [0, 1, 2, 254, 255] },
        { bytes: Array.from({ length: 1000 }, (_, i) => i & 255) },
        { text: '' },
        { text: 'bare client done' },
      ];
      const { via, got } = await bareClient(blank, wsDefault, frames);
      // The sender gets its own frames back, as sent: binary stays binary.
      check(JSON.stringify(got) === JSON.stringify(frames), `the bare client (${via}) got back ${JSON.stringify(got).slice(0, 300)}`);
      seen.def.push('from a bare client', '[binary, 5 bytes]', '[binary, 1000 bytes]', '', 'bare client done');
      await waitLines(ra, 'raw-A', seen.def);
      await waitLines(rb, 'raw-B', seen.def);
      const ops = await bareClient(blank, wsOps, [{ bytes: [7, 7, 7] }]);
      check(ops.got.length === 1 && JSON.stringify(ops.got[0].bytes) === '[7,7,7]', `the bare client in ops got back ${JSON.stringify(ops.got)}`);
      seen.ops.push('[binary, 3 bytes]');
      await waitLines(rc, 'raw-C', seen.ops);
      await waitLines(rd, 'raw-D', seen.ops);
      await blank.close();
      console.log(`#   (the bare client ran in ${via})`);
    });

    await step('raw mode: changing the fragment of an open page moves it to that group', async () => {
      const re = await rawPage('raw-E', { viewport: { width: 900, height: 600 } });
      await re.goto(rawUrl);
      await waitConnected(re, 'raw-E', wsDefault);
      // As when the address bar's fragment is edited: no new document is loaded.
      await re.evaluate(() => { location.hash = 'ops'; });
      await waitConnected(re, 'raw-E', wsOps);
      await typeLine(rc, 'ops, with E');
      seen.ops.push('ops, with E');
      await waitLines(rc, 'raw-C', seen.ops);
      await waitLines(rd, 'raw-D', seen.ops);
      await re.waitForFunction(() => [...document.querySelectorAll('#log > div:not(.note)')].some((d) => d.textContent === 'ops, with E'));
      await typeLine(re, 'E in ops');
      seen.ops.push('E in ops');
      await waitLines(rc, 'raw-C', seen.ops);
      await typeLine(ra, 'E has left');
      seen.def.push('E has left');
      await waitLines(ra, 'raw-A', seen.def);
      await waitLines(rb, 'raw-B', seen.def);
      check(!(await rawLines(re)).includes('E has left'), "page E, now in ops, shows the default group's line");
      await re.context().close();
      delete pages['raw-E'];
    });

    await step('raw mode: after a server restart the pages reconnect by themselves', async () => {
      await rawServer.stop();
      for (const [name, page] of [['raw-A', ra], ['raw-B', rb], ['raw-C', rc], ['raw-D', rd]]) {
        await page.waitForFunction(() => [...document.querySelectorAll('#log > div.note')].some((d) => d.textContent.startsWith('connection closed')));
        check((await page.locator('#log > div.note').last().textContent()).endsWith('reconnecting'), `page ${name} does not say it is reconnecting`);
      }
      await ra.screenshot({ path: path.join(OUT, 'raw-a-offline.png') });
      await rawServer.start(); // same port
      await waitConnected(ra, 'raw-A', wsDefault, 2);
      await waitConnected(rb, 'raw-B', wsDefault, 2);
      await waitConnected(rc, 'raw-C', wsOps, 2);
      await waitConnected(rd, 'raw-D', wsOps, 2);
      await typeLine(rb, 'after the restart');
      seen.def.push('after the restart');
      await typeLine(rd, 'ops after the restart');
      seen.ops.push('ops after the restart');
      for (const [name, page, want] of [['raw-A', ra, seen.def], ['raw-B', rb, seen.def], ['raw-C', rc, seen.ops], ['raw-D', rd, seen.ops]]) {
        await waitLines(page, name, want);
      }
    });

    await step("raw mode: the page's script runs under its CSP, which reports no violation", async () => {
      // Every line above got through the page's script, so it ran; the CSP must not have
      // blocked anything else either (a console error about it would have failed a step).
      for (const [name, page] of [['raw-A', ra], ['raw-B', rb], ['raw-C', rc], ['raw-D', rd]]) {
        const violations = await page.evaluate(() => window.cspViolations);
        check(Array.isArray(violations) && violations.length === 0, `page ${name} reported CSP violations: ${JSON.stringify(violations)}`);
        const style = await page.locator('#log').evaluate((el) => getComputedStyle(el).whiteSpace);
        check(style === 'pre-wrap', `page ${name}'s inline style did not apply (white-space: ${style})`);
      }
    });

    await step('raw mode: screenshots saved under target/browser/', async () => {
      await ra.screenshot({ path: path.join(OUT, 'raw-a.png') });
      await rb.screenshot({ path: path.join(OUT, 'raw-b.png') });
      await rc.screenshot({ path: path.join(OUT, 'raw-ops.png') });
    });

    // ------------------------------------------------------------ TLS (--tls-cert/--tls-key)
    // The one port serves https and wss only. The pages trust the self-signed certificate by
    // ignoreHTTPSErrors; Node's requests trust it as their only CA, so it is checked there.
    await tlsServer.start();
    const tlsUrl = `https://localhost:${tlsPort}/`; // page T1
    const tlsIpUrl = `https://127.0.0.1:${tlsPort}/`; // page T2, and Node's requests
    const sockets = { 'tls-1': [], 'tls-2': [] }; // the WebSocket URLs each page opened
    const tlsPage = async (name, options) => {
      const context = await browser.newContext({ ...options, ignoreHTTPSErrors: true });
      const page = await context.newPage();
      pages[name] = page;
      watch(page, name);
      page.on('websocket', (ws) => sockets[name].push(ws.url()));
      return page;
    };
    /** Loads `url` in `page`: 200 over https with the CSP, and the client online over wss. */
    const loadOverTls = async (page, name, url, nick, load = () => page.goto(url)) => {
      const known = sockets[name].length;
      const r = await load();
      check(r && r.status() === 200, `page ${name}: ${url} answered ${r ? r.status() : 'nothing'}`);
      check(r.url() === url, `page ${name} ended up at ${r.url()}, not ${url}`);
      const csp = (await r.allHeaders())['content-security-policy'] || '';
      check(/default-src 'none'/.test(csp) && /script-src 'sha256-/.test(csp), `page ${name}: no hash-based CSP over https: ${JSON.stringify(csp)}`);
      check((await page.evaluate(() => location.protocol)) === 'https:', `page ${name} is not an https page`);
      await waitStatus(page, 'online', nick && `Connected as ${nick}`);
      const ws = `wss://${new URL(url).host}/ws`;
      const opened = sockets[name].slice(known);
      check(opened.length > 0 && opened.every((u) => u === ws), `page ${name} opened WebSockets to ${JSON.stringify(opened)}, expected ${ws}`);
      await log(page, 'r:lobby').waitFor();
    };
    const t1 = await tlsPage('tls-1', { viewport: { width: 1200, height: 760 } });
    const t2 = await tlsPage('tls-2', { viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });

    await step('tls: GET / over https serves the page with its hash-based CSP (certificate checked)', async () => {
      const body = await checkPageResponse(tlsIpUrl, { ca: tls.pem });
      check(body.includes('<title>') && !body.includes('<title>smolchat (raw)</title>'), 'GET / over https is not web/index.html');
    });

    await step('tls: pages load over https (localhost, 127.0.0.1) and connect over wss', async () => {
      await loadOverTls(t1, 'tls-1', tlsUrl);
      await loadOverTls(t2, 'tls-2', tlsIpUrl);
      for (const [page, nick] of [[t1, 'tessa'], [t2, 'theo']]) {
        const field = page.getByLabel('Nickname');
        await field.fill(nick);
        await field.press('Enter');
        await waitStatus(page, 'online', `Connected as ${nick}`);
      }
      await waitMembers(t1, ['tessa', 'theo'], []);
    });

    await step('tls: two pages chat over wss', async () => {
      await say(t1, 'r:lobby', 'hello over wss');
      await seeMessage(t2, 'r:lobby', 'hello over wss', 'tessa');
      await say(t2, 'r:lobby', 'wss reply from the phone');
      await seeMessage(t1, 'r:lobby', 'wss reply from the phone', 'theo');
    });

    await step('tls: a reload loads over https again, reconnects over wss and chats', async () => {
      await loadOverTls(t1, 'tls-1', tlsUrl, 'tessa', () => t1.reload());
      await say(t1, 'r:lobby', 'back after the reload');
      await seeMessage(t2, 'r:lobby', 'back after the reload', 'tessa');
      await say(t2, 'r:lobby', 'welcome back');
      await seeMessage(t1, 'r:lobby', 'welcome back', 'theo');
    });

    await step('tls: plain http on the TLS port gets no page, and wss chat goes on', async () => {
      const before = await notTlsFailures(tlsIpUrl, tls.pem);
      const plain = [`http://127.0.0.1:${tlsPort}/`, `http://127.0.0.1:${tlsPort}/healthz`];
      for (const url of plain) {
        let answer;
        try {
          const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
          answer = `HTTP ${r.status}`;
          check(r.status !== 200, `plain GET ${url} on the TLS port answered 200`);
        } catch (e) {
          if (e.message.includes('on the TLS port answered 200')) throw e;
          answer = `failed (${e.cause ? e.cause.code || e.cause.message : e.name})`;
        }
        console.log(`#   (plain GET ${url}: ${answer})`);
      }
      const after = await notTlsFailures(tlsIpUrl, tls.pem);
      check(after - before >= plain.length, `the server counted ${after - before} not_tls handshake failures for ${plain.length} plain requests`);
      await say(t2, 'r:lobby', 'still here after the plain requests');
      await seeMessage(t1, 'r:lobby', 'still here after the plain requests', 'theo');
      await say(t1, 'r:lobby', 'wss undisturbed');
      await seeMessage(t2, 'r:lobby', 'wss undisturbed', 'tessa');
      await waitStatus(t1, 'online', 'Connected as tessa');
      await waitStatus(t2, 'online', 'Connected as theo');
      check(sockets['tls-1'].length === 2 && sockets['tls-2'].length === 1,
        `the pages opened ${JSON.stringify(sockets)}: a connection was lost to the plain requests`);
    });

    await step('tls: screenshot saved under target/browser/', async () => {
      await t1.screenshot({ path: path.join(OUT, 'tls.png') });
    });

    await authServer.start();
    const authUrl = `http://127.0.0.1:${authPort}/`;
    const u1 = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
    const u2 = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
    Object.assign(pages, { u1, u2 });
    watch(u1, 'U1');
    watch(u2, 'U2', { refusals: true });

    await step('auth: a link with #token= signs in as the token\'s user; the token leaves the address bar', async () => {
      await u1.goto(`${authUrl}#token=${jwt({ sub: 'ada', exp: now() + 3600 })}`);
      await waitStatus(u1, 'online', 'Connected as ada');
      check(await u1.evaluate(() => location.hash === ''), 'the token is still in the address bar');
      check(await u1.evaluate(() => document.getElementById('nick').readOnly), 'the nick box can still be edited with a token');
      const page = fs.readFileSync(path.join(OUT, 'server-auth.log'), 'utf8');
      check(!/token=/.test(page), 'the server log mentions a token');
    });

    await step('auth: the tab keeps its token: a reload signs in again as the same user', async () => {
      await u1.reload();
      await waitStatus(u1, 'online', 'Connected as ada');
      await log(u1, 'r:lobby').waitFor();
    });

    await step('auth: an expired token gets a clear message, not endless retries; a new link signs in', async () => {
      await u2.goto(`${authUrl}#token=${jwt({ sub: 'bob', exp: now() - 60 })}`);
      await waitStatus(u2, 'refused');
      const text = await u2.locator('#status-text').textContent();
      check(/expired/.test(text), `the refusal does not say why: ${JSON.stringify(text)}`);
      check(!(await u2.locator('#error').isHidden()), 'no error banner for a refused token');
      await u2.evaluate((t) => { location.hash = '#token=' + t; }, jwt({ sub: 'bob', exp: now() + 3600 }));
      await waitStatus(u2, 'online', 'Connected as bob');
      await say(u2, 'r:lobby', 'bob signed in');
      await seeMessage(u1, 'r:lobby', 'bob signed in', 'bob');
    });

    await step('auth: a forged token is refused with its reason', async () => {
      const forged = jwt({ sub: 'ada', exp: now() + 3600 }, 'not the server secret, but long enough');
      const u3 = await (await browser.newContext()).newPage();
      pages.u3 = u3;
      watch(u3, 'U3', { refusals: true });
      await u3.goto(`${authUrl}#token=${forged}`);
      await waitStatus(u3, 'refused');
      const text = await u3.locator('#status-text').textContent();
      check(/signature/.test(text), `the refusal does not say why: ${JSON.stringify(text)}`);
    });

    await step('api: a message published with curl-like POST shows in the page, marked as an app', async () => {
      const r = await fetch(`${authUrl}api/rooms/lobby/messages`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ text: 'the door is open', from: 'doorbell' }),
      });
      check(r.status === 201, `POST answered ${r.status}`);
      const msg = await seeMessage(u1, 'r:lobby', 'the door is open', 'doorbell');
      check(await msg.first().locator('.tag').count() === 1, 'the API message is not marked');
      await u1.screenshot({ path: path.join(OUT, 'auth.png') });
    });

    await signInServer.start();
    await step('auth required, no token: the page asks to sign in, and does not say it is connecting', async () => {
      const u4 = await (await browser.newContext({ viewport: { width: 1000, height: 600 } })).newPage();
      pages.u4 = u4;
      watch(u4, 'U4', { refusals: true });
      await u4.goto(`http://127.0.0.1:${signInPort}/`);
      await waitStatus(u4, 'refused');
      const status = await u4.locator('#status-text').textContent();
      check(/^Not signed in: .*sign-in link/.test(status), `the status says ${JSON.stringify(status)}`);
      const empty = await u4.locator('#empty').textContent();
      check(await u4.locator('#empty').isVisible() && /^Sign in/.test(empty) && !/Connecting/.test(empty), `the page says ${JSON.stringify(empty)}`);
      await u4.screenshot({ path: path.join(OUT, 'sign-in.png') });
      // The link with a token signs in, and the chat takes the place of the notice.
      await u4.evaluate((t) => { location.hash = '#token=' + t; }, jwt({ sub: 'cleo', exp: now() + 3600 }));
      await waitStatus(u4, 'online', 'Connected as cleo');
      await log(u4, 'r:lobby').waitFor({ state: 'visible' });
      check(await u4.locator('#empty').isHidden(), 'the sign-in notice stays after signing in');
    });
  } catch (e) {
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(OUT, `failure-${name}.png`) }).catch(() => {});
    }
    throw e;
  } finally {
    await browser.close().catch(() => {});
    await proxy.close().catch(() => {});
    await server.stop().catch(() => {});
    await rawServer.stop().catch(() => {});
    await tlsServer.stop().catch(() => {});
    await authServer.stop().catch(() => {});
    await signInServer.stop().catch(() => {});
  }
}

try {
  await main();
  console.log(`${passed} passed, 0 failed`);
  console.log(`screenshots and the server's log: ${path.relative(process.cwd(), OUT) || '.'}/`);
} catch (e) {
  console.error(`\nnot ok ${passed + 1}: ${e && e.message ? e.message : e}`);
  if (serverLog.length) console.error(`\nlast server output:\n${serverLog.join('').slice(-1500)}`);
  console.error(`\nscreenshots and the server's log: ${OUT}/`);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
}
