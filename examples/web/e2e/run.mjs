// Browser end-to-end test of the example app against a real authgraph server.
//
//   npm run build && AUTHGRAPH_BIN=/path/to/authgraph npm run e2e
//
// Starts authgraph on a temporary SQLite database with ACCESS_TOKEN_TTL=2s and
// serves the built app three ways:
//   same-origin  app + /graphql proxied to authgraph on one origin (dist/)
//   cross-origin app on its own port, listed in CORS_ALLOWED_ORIGINS, calling
//                authgraph directly with credentials (a second build with
//                VITE_GRAPHQL_URL pointing at authgraph)
//   unlisted     the cross-origin build served on a port NOT in the list
// and drives headless Chromium through each, for both Apollo and urql.
// Mail goes to .eml files in a temporary MAIL_DIR, and APP_URL is the
// same-origin app, so the password-reset link read from the mail opens the
// app's /reset-password page. The sessionEvents subscription (a WebSocket on
// /graphql) is followed across two tabs of one session: a logout in one must
// show in the other within a second; an admin made with `authgraph
// create-admin` changes the user's role for ROLE_CHANGED. A second factor:
// password + TOTP (codes computed here from the enrolled secret) and a recovery
// code, then passkeys in Chromium's virtual authenticator (DevTools WebAuthn
// domain) on an http://localhost origin: added, used alone, and used as the
// second factor of a password login.
// authgraph runs on a temporary SQLite file, or on the empty PostgreSQL
// database E2E_DATABASE_URL names.
// Prints "N passed, M failed" last and exits non-zero on any failure.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { build } from 'vite';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const AUTHGRAPH_BIN = process.env.AUTHGRAPH_BIN || '/var/tmp/authgraph-target/debug/authgraph';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const DIST = path.join(ROOT, 'dist');
const PASSWORD = 'E2e-correct-horse-battery-staple';
const NEW_PASSWORD = 'E2e-new-password-after-the-reset';
const ADMIN_EMAIL = 'e2e-admin@example.com';
const ADMIN_PASSWORD = 'E2e-admin-password-0123456789';
// A logout in one tab must show in another tab of the session within this.
const LIVE_LOGOUT_DEADLINE_MS = 1000;
// ACCESS_TOKEN_TTL=2s plus the server's 5 s leeway: rejected ~7 s after issue.
const TTL = '2s';
const EXPIRY_WAIT_MS = 8500;
const OVERALL_TIMEOUT_MS = 170_000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authgraph-web-e2e-'));
const MAIL_DIR = path.join(tmp, 'mail');
fs.mkdirSync(MAIL_DIR);
const cleanups = [];
let passed = 0;
let failed = 0;
/** Measured live-logout delays, printed at the end. */
const liveDelays = [];

function log(...args) {
  console.log(...args);
}

async function cleanup() {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch {
      /* best effort */
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}

const watchdog = setTimeout(async () => {
  console.error(`e2e: overall timeout of ${OVERALL_TIMEOUT_MS / 1000}s exceeded`);
  await cleanup();
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
watchdog.unref();

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// ---------------------------------------------------------------- servers

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
};

/** Open WebSocket tunnels of each static server (by its URL): [browser socket, authgraph socket]. */
const tunnels = new Map();

/** Cuts every proxied WebSocket of a static server, as a network drop would (the browser sees 1006). */
function dropWebSockets(appUrl) {
  const open = [...tunnels.get(appUrl)];
  for (const pair of open) for (const socket of pair) socket.destroy();
  return open.length;
}

/** A static file server for a built app; with `proxyTo()`, /graphql goes to authgraph keeping Host,
 *  WebSocket upgrades included (piped as raw bytes both ways, the handshake too).
 *  Any other path without a file extension (/, /forgot-password, /reset-password?token=…)
 *  gets index.html: the app picks its page from the path (SPA fallback). */
async function startStatic(getDir, proxyTo) {
  const open = new Set();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (proxyTo && url.pathname === '/graphql') {
      const target = new URL(proxyTo());
      const up = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (upRes) => {
          res.writeHead(upRes.statusCode, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', () => {
        res.writeHead(502);
        res.end('bad gateway');
      });
      req.pipe(up);
      return;
    }
    const dir = getDir();
    let file;
    try {
      file = path.normalize(path.join(dir, decodeURIComponent(url.pathname)));
    } catch {
      res.writeHead(400);
      return res.end();
    }
    if (!file.startsWith(dir)) {
      res.writeHead(403);
      return res.end();
    }
    if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      // A missing asset is a 404, not the app's page in its place.
      if (path.extname(url.pathname)) {
        res.writeHead(404);
        return res.end();
      }
      file = path.join(dir, 'index.html');
    }
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  server.on('upgrade', (req, socket, head) => {
    if (!proxyTo || new URL(req.url, 'http://x').pathname !== '/graphql') return socket.destroy();
    const target = new URL(proxyTo());
    const up = net.connect(Number(target.port), target.hostname);
    const pair = [socket, up];
    open.add(pair);
    const close = () => {
      open.delete(pair);
      socket.destroy();
      up.destroy();
    };
    socket.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
    up.on('connect', () => {
      // The request as the browser sent it (Host, Origin, Sec-WebSocket-*), then both ways.
      const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head?.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${server.address().port}`;
  tunnels.set(url, open);
  cleanups.push(() => new Promise((r) => {
    for (const pair of open) for (const socket of pair) socket.destroy();
    server.closeAllConnections();
    server.close(r);
  }));
  return url;
}

async function startAuthgraph(allowedOrigins, appUrl, extraEnv = {}) {
  const logFile = path.join(tmp, 'authgraph.log');
  const out = fs.openSync(logFile, 'w');
  // No SMTP_URL: every mail is written to MAIL_DIR as an .eml file, with links
  // to APP_URL (the same-origin app) + RESET_PASSWORD_PATH + ?token=…
  const { SMTP_URL: _smtp, ...inherited } = process.env;
  const env = {
    ...inherited,
    // E2E_DATABASE_URL: an empty PostgreSQL database instead (CI runs the suite on both).
    DATABASE_URL: process.env.E2E_DATABASE_URL || `sqlite://${path.join(tmp, 'e2e.db')}?mode=rwc`,
    LISTEN_ADDR: '127.0.0.1:0',
    JWT_SECRET: 'e2e-secret-0123456789abcdef0123456789abcdef',
    APP_ENV: 'development',
    COOKIE_SECURE: 'false',
    ACCESS_TOKEN_TTL: TTL,
    CORS_ALLOWED_ORIGINS: allowedOrigins.join(','),
    RATE_LIMIT_LOGIN_PER_IP: '100000/1s',
    RATE_LIMIT_REGISTER_PER_IP: '100000/1s',
    RATE_LIMIT_REFRESH_PER_IP: '100000/1s',
    RATE_LIMIT_LOGIN_PER_ACCOUNT: '100000/1s',
    RATE_LIMIT_MAIL_PER_IP: '100000/1s',
    RATE_LIMIT_LINK_PER_IP: '100000/1s',
    RATE_LIMIT_WRITE_PER_IP: '100000/1s',
    RATE_LIMIT_WRITE_PER_ACCOUNT: '100000/1s',
    MAIL_DIR,
    APP_URL: appUrl,
    RESET_PASSWORD_PATH: '/reset-password',
    RUST_LOG: process.env.RUST_LOG || 'info',
    NO_COLOR: '1',
    ...extraEnv,
  };
  // An admin (for setUserRole -> ROLE_CHANGED), made as an operator would.
  const admin = spawn(AUTHGRAPH_BIN, ['create-admin', '--email', ADMIN_EMAIL], {
    env: { ...env, AUTHGRAPH_ADMIN_PASSWORD: ADMIN_PASSWORD },
    stdio: ['ignore', out, out],
  });
  const killAdmin = setTimeout(() => admin.kill('SIGKILL'), 60_000);
  const [adminCode] = await once(admin, 'exit');
  clearTimeout(killAdmin);
  assert(adminCode === 0, `authgraph create-admin exited with ${adminCode}; log:\n${fs.readFileSync(logFile, 'utf8').slice(-3000)}`);
  const child = spawn(AUTHGRAPH_BIN, ['serve'], {
    env,
    stdio: ['ignore', 'pipe', out],
  });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await once(child, 'exit');
      clearTimeout(t);
    }
  });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error('authgraph did not report its address within 30s')), 30_000);
    child.stdout.on('data', (chunk) => {
      fs.appendFileSync(logFile, chunk);
      if (buf === null) return;
      buf += chunk.toString();
      // eslint-disable-next-line no-control-regex
      const m = buf.replace(/\x1b\[[0-9;]*m/g, '').match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(t);
        buf = null;
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`authgraph exited early (${code}); log:\n${fs.readFileSync(logFile, 'utf8').slice(-3000)}`));
    });
  });
  child.removeAllListeners('exit');
  return { url, logFile };
}

// ---------------------------------------------------------------- browser helpers

/** Records GraphQL calls seen by the page: operation, status, parsed body (null when unreadable). */
function recordGraphql(page) {
  const calls = [];
  page.on('requestfinished', async (req) => {
    if (!req.url().endsWith('/graphql') || req.method() !== 'POST') return;
    const entry = { op: opName(req.postData()), status: null, body: null };
    calls.push(entry);
    try {
      const res = await req.response();
      entry.status = res?.status() ?? null;
      entry.body = res ? await res.json() : null;
    } catch {
      /* opaque / unreadable */
    }
  });
  page.on('requestfailed', (req) => {
    if (!req.url().endsWith('/graphql')) return;
    calls.push({ op: opName(req.postData()), status: null, body: null, failure: req.failure()?.errorText ?? 'failed' });
  });
  return calls;
}

function opName(postData) {
  try {
    const body = JSON.parse(postData ?? '{}');
    if (body.operationName) return body.operationName;
    const m = /(?:query|mutation)\s+(\w+)/.exec(body.query ?? '');
    return m ? m[1] : '?';
  } catch {
    return '?';
  }
}

const settle = (ms = 300) => new Promise((r) => setTimeout(r, ms));

async function waitIdle(page) {
  await page.waitForFunction(() => document.getElementById('status')?.dataset.state !== 'busy', null, { timeout: 15_000 });
  await settle(); // let response listeners parse bodies
}

async function uiState(page) {
  return page.evaluate(() => {
    const s = document.getElementById('status');
    const e = document.getElementById('error');
    return {
      state: s.dataset.state,
      hasToken: s.dataset.hasToken,
      email: document.getElementById('me-email').textContent,
      role: document.getElementById('me-role').textContent,
      id: document.getElementById('me-id').textContent,
      error: e.textContent,
      code: e.dataset.code,
      reason: e.dataset.reason,
      live: document.getElementById('live').dataset.state,
      liveCode: document.getElementById('live').dataset.code,
    };
  });
}

/** Polls the page's state from here (not with the page's own timers, which a
 *  background tab may throttle) until `pred(state)` holds or `deadline` (ms
 *  since the epoch) passes. Returns { state, at } or null. */
async function pollUntil(page, pred, deadline, every = 10) {
  for (;;) {
    const state = await uiState(page);
    const at = Date.now();
    if (pred(state)) return { state, at };
    if (at > deadline) return null;
    await settle(every);
  }
}

async function waitState(page, pred, what, timeoutMs = 15_000) {
  const hit = await pollUntil(page, pred, Date.now() + timeoutMs, 25);
  if (!hit) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}: ${JSON.stringify(await uiState(page))}`);
  return hit.state;
}

/** The page's WebSockets as Chromium saw them: URL, frames both ways (parsed), closed or not. */
function recordSockets(page) {
  const sockets = [];
  const parse = (payload) => {
    try {
      return JSON.parse(typeof payload === 'string' ? payload : payload.toString());
    } catch {
      return { raw: String(payload) };
    }
  };
  page.on('websocket', (ws) => {
    const entry = { url: ws.url(), sent: [], received: [], closed: false };
    sockets.push(entry);
    ws.on('framesent', (f) => entry.sent.push(parse(f.payload)));
    ws.on('framereceived', (f) => entry.received.push(parse(f.payload)));
    ws.on('socketerror', (e) => (entry.error = String(e)));
    ws.on('close', () => (entry.closed = true));
  });
  return sockets;
}

/** The sessionEvents events a socket delivered. */
const sessionEventsIn = (socket) =>
  socket.received.filter((m) => m.type === 'next').map((m) => m.payload?.data?.sessionEvents).filter(Boolean);

/** A GraphQL request straight to authgraph (as a server-side script would: no Origin). */
async function gql(apiUrl, query, variables, token) {
  const res = await fetch(`${apiUrl}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors?.length) throw new Error(`${query.trim().split('\n')[0]}: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** As the admin (made with `authgraph create-admin`): setUserRole. */
async function setRole(apiUrl, userId, role) {
  const { login } = await gql(apiUrl, 'mutation ($input: LoginInput!) { login(input: $input) { accessToken } }',
    { input: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } });
  const { setUserRole } = await gql(apiUrl, 'mutation ($id: ID!, $role: Role!) { setUserRole(id: $id, role: $role) { id role } }',
    { id: userId, role }, login.accessToken);
  assert(setUserRole.role === role, `setUserRole answered ${JSON.stringify(setUserRole)}`);
}

/** A WebSocket handshake on authgraph's /graphql with this Origin, as a browser
 *  would send it; resolves to the HTTP status (101 when upgraded). */
function wsHandshake(apiUrl, origin) {
  return new Promise((resolve, reject) => {
    const u = new URL(apiUrl);
    const req = http.request({
      host: u.hostname,
      port: u.port,
      path: '/graphql',
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': crypto.randomBytes(16).toString('base64'),
        'sec-websocket-protocol': 'graphql-transport-ws',
        ...(origin ? { origin } : {}),
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', reject);
    req.end();
  });
}

async function click(page, id) {
  await page.click(`#${id}`);
  await waitIdle(page);
}

const ok = (calls, op) => calls.some((c) => c.op === op && c.body?.data?.[lcFirst(op)] && !c.body.errors);
const lcFirst = (s) => s[0].toLowerCase() + s.slice(1);

// ---------------------------------------------------------------- mail (MAIL_DIR)

// authgraph writes each mail as <id>.eml: multipart/alternative with a
// text/plain and a text/html part, each quoted-printable (or base64). A small
// MIME reader is enough to take the link out of the text part.

/** Header block -> { lowercased name: unfolded value }. */
function parseHeaders(block) {
  const headers = {};
  for (const line of block.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return headers;
}

/** A parameter of a structured header value (`boundary`, `charset`). */
function headerParam(value, name) {
  const m = new RegExp(`;\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, 'i').exec(value ?? '');
  return m ? (m[1] ?? m[2]) : null;
}

/** RFC 2045 6.7: `=XX` is a byte, `=` at the end of a line is a soft line break,
 *  whitespace at the end of a line is not part of the text. Input chars are bytes. */
function decodeQuotedPrintable(text) {
  const bytes = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, n) => {
    let line = raw.replace(/[ \t]+$/, '');
    const soft = line.endsWith('=');
    if (soft) line = line.slice(0, -1);
    for (let i = 0; i < line.length; i++) {
      const hex = line.slice(i + 1, i + 3);
      if (line[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
        bytes.push(parseInt(hex, 16));
        i += 2;
      } else {
        bytes.push(line.charCodeAt(i) & 0xff);
      }
    }
    if (!soft && n < lines.length - 1) bytes.push(13, 10);
  });
  return Buffer.from(bytes);
}

function decodeBody(body, headers) {
  const encoding = (headers['content-transfer-encoding'] ?? '7bit').toLowerCase();
  const bytes =
    encoding === 'quoted-printable' ? decodeQuotedPrintable(body)
    : encoding === 'base64' ? Buffer.from(body.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64')
    : Buffer.from(body, 'latin1');
  return new TextDecoder(headerParam(headers['content-type'], 'charset') ?? 'utf-8').decode(bytes);
}

/** The leaf parts of an entity (a string of bytes as latin1) as { type, headers, text },
 *  or null when a multipart is not closed yet (the file is still being written). */
function mimeLeaves(entity) {
  const sep = /\r?\n\r?\n/.exec(entity);
  if (!sep) return null;
  const headers = parseHeaders(entity.slice(0, sep.index));
  const body = entity.slice(sep.index + sep[0].length);
  const type = (headers['content-type'] ?? 'text/plain').split(';')[0].trim().toLowerCase();
  if (!type.startsWith('multipart/')) return [{ type, headers, text: decodeBody(body, headers) }];
  const boundary = headerParam(headers['content-type'], 'boundary');
  if (!boundary) return null;
  const parts = [];
  let current = null;
  let closed = false;
  for (const line of body.split(/\r?\n/)) {
    const t = line.trimEnd();
    if (t === `--${boundary}` || t === `--${boundary}--`) {
      if (current) parts.push(current.join('\r\n'));
      current = [];
      if (t.endsWith('--')) {
        closed = true;
        break;
      }
    } else if (current) {
      current.push(line);
    }
  }
  if (!closed) return null;
  const leaves = [];
  for (const part of parts) {
    const sub = mimeLeaves(part);
    if (!sub) return null;
    leaves.push(...sub);
  }
  return leaves;
}

function readMail(file) {
  const raw = fs.readFileSync(file, 'latin1');
  const sep = /\r?\n\r?\n/.exec(raw);
  const leaves = sep && mimeLeaves(raw);
  if (!leaves) return null;
  const headers = parseHeaders(raw.slice(0, sep.index));
  return {
    file: path.basename(file),
    raw,
    headers,
    text: leaves.find((l) => l.type === 'text/plain')?.text ?? null,
    html: leaves.find((l) => l.type === 'text/html')?.text ?? null,
  };
}

/** Every complete .eml in MAIL_DIR addressed to `to`. */
function mailsTo(to) {
  return fs
    .readdirSync(MAIL_DIR)
    .filter((n) => n.endsWith('.eml'))
    .map((n) => readMail(path.join(MAIL_DIR, n)))
    .filter((m) => m && (m.headers.to ?? '').toLowerCase().includes(to.toLowerCase()));
}

/** The reset link in a mail's text part: a line of its own, APP_URL + /reset-password?token=. */
function resetLinkIn(mail, appUrl) {
  return (mail.text ?? '').split(/\r?\n/).map((l) => l.trim()).find((l) => l.startsWith(`${appUrl}/reset-password?token=`)) ?? null;
}

/** Polls MAIL_DIR for the reset mail to `to` (a background sender writes it within about a second). */
async function waitForResetMail(to, appUrl, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const mail = mailsTo(to).find((m) => resetLinkIn(m, appUrl));
    if (mail) return mail;
    if (Date.now() > deadline) throw new Error(`no reset mail to ${to} in ${MAIL_DIR} after ${timeoutMs / 1000}s (files: ${fs.readdirSync(MAIL_DIR).join(', ') || 'none'})`);
    await settle(200);
  }
}

const decodeHtmlEntities = (s) =>
  s
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');

// ---------------------------------------------------------------- scenarios

async function allowedFlow(browser, appUrl, client, mode, step) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const calls = recordGraphql(page);
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const email = `e2e-${client}-${mode}-${Date.now()}@example.com`;
    await page.goto(`${appUrl}/?client=${client}`);
    await waitIdle(page);
    let s = await uiState(page);
    assert(s.state === 'logged-out', `fresh page should be logged out, got ${JSON.stringify(s)}`);
    assert((await page.textContent('#client-name')) === client, 'client switch not applied');
    step('fresh page is logged out (startup me -> MISSING_TOKEN -> refresh fails)');

    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await click(page, 'register');
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email && s.role === 'USER' && s.id, `register failed: ${JSON.stringify(s)}`);
    assert(ok(calls, 'Register'), 'no successful Register call seen');
    step('register through the UI shows the me view');

    await click(page, 'logout');
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await page.click('#login');
    await waitIdle(page);
    const loginAt = Date.now();
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email, `login failed: ${JSON.stringify(s)}`);
    step('login through the UI shows the me view');
    await waitState(page, (x) => x.live === 'open', 'the sessionEvents socket to open');
    step('logged in, the page follows sessionEvents over its WebSocket');

    const docCookie = await page.evaluate(() => document.cookie);
    assert(!docCookie.includes('refresh_token'), `document.cookie exposes the refresh token: ${docCookie}`);
    const jar = await context.cookies();
    const rt = jar.find((c) => c.name === 'refresh_token');
    assert(rt && rt.httpOnly && rt.sameSite === 'Strict', `expected an HttpOnly SameSite=Strict refresh_token cookie, got ${JSON.stringify(jar)}`);
    const storage = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
    assert(!storage.includes('eyJ'), `a token was written to web storage: ${storage}`);
    step('refresh cookie is HttpOnly (not in document.cookie); no token in web storage');

    const wait = EXPIRY_WAIT_MS - (Date.now() - loginAt);
    if (wait > 0) await settle(wait);
    const before = calls.length;
    await click(page, 'refresh-me');
    s = await uiState(page);
    const seq = calls.slice(before);
    const seqText = seq.map((c) => `${c.op}:${c.body?.errors?.[0]?.extensions?.reason ?? (c.body ? 'ok' : c.failure ?? '?')}`).join(' ');
    assert(s.state === 'logged-in' && s.email === email, `refresh me after expiry failed: ${JSON.stringify(s)} calls: ${seqText}`);
    const iExpired = seq.findIndex((c) => c.op === 'Me' && c.body?.errors?.[0]?.extensions?.reason === 'ACCESS_TOKEN_EXPIRED');
    const iRefresh = seq.findIndex((c) => c.op === 'RefreshToken' && c.body?.data?.refreshToken?.accessToken);
    const iMeOk = seq.findIndex((c, i) => i > iRefresh && c.op === 'Me' && c.body?.data?.me?.email === email);
    assert(iExpired >= 0 && iRefresh > iExpired && iMeOk > iRefresh, `expected Me(ACCESS_TOKEN_EXPIRED) -> RefreshToken -> Me(ok), saw: ${seqText}`);
    step(`after expiry "refresh me" refreshes silently (${seqText})`);

    const beforeReload = calls.length;
    await page.reload();
    await waitIdle(page);
    s = await uiState(page);
    const reloadSeq = calls.slice(beforeReload).map((c) => c.op).join(' ');
    assert(s.state === 'logged-in' && s.email === email, `reload did not resume the session: ${JSON.stringify(s)} calls: ${reloadSeq}`);
    assert(calls.slice(beforeReload).some((c) => c.op === 'RefreshToken' && c.body?.data), 'reload resumed without a refresh?');
    step(`after a reload the session resumes through the cookie (${reloadSeq})`);

    await click(page, 'logout');
    s = await uiState(page);
    assert(s.state === 'logged-out' && s.hasToken === 'false', `logout failed: ${JSON.stringify(s)}`);
    assert(ok(calls, 'Logout'), 'no successful Logout call');
    assert(!(await context.cookies()).some((c) => c.name === 'refresh_token'), 'refresh cookie not cleared by logout');
    assert(s.live === 'off', `the socket is still followed after logout: ${JSON.stringify(s)}`);
    step('logout clears the session and the cookie, and stops following sessionEvents');

    const beforeAfter = calls.length;
    await click(page, 'refresh-me');
    s = await uiState(page);
    const after = calls.slice(beforeAfter);
    assert(s.state === 'logged-out' && s.hasToken === 'false' && s.code === 'UNAUTHENTICATED', `refresh me after logout should fail: ${JSON.stringify(s)}`);
    const refreshAttempt = after.find((c) => c.op === 'RefreshToken');
    assert(refreshAttempt && refreshAttempt.body?.errors?.[0]?.extensions?.code === 'UNAUTHENTICATED' && !refreshAttempt.body?.data,
      `expected a failing RefreshToken attempt after logout, saw ${JSON.stringify(after)}`);
    step(`after logout "refresh me" fails (${s.error})`);

    assert(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join('; ')}`);
    step('no uncaught errors in the page');
  } finally {
    await context.close();
  }
}

/** Two tabs of one session (the second resumes it through the cookie), both
 *  following sessionEvents over a WebSocket: nothing happening changes nothing,
 *  past the access tokens' expiry; a dropped connection comes back (same-origin:
 *  this proxy cuts it); ROLE_CHANGED shows in both; a logout in the first shows
 *  in the second within LIVE_LOGOUT_DEADLINE_MS, without a reload or a request. */
async function liveFlow(browser, appUrl, apiUrl, client, mode, step) {
  const context = await browser.newContext();
  try {
    const email = `e2e-${client}-live-${mode}-${Date.now()}@example.com`;
    const wsUrl = `${(mode === 'same' ? appUrl : apiUrl).replace(/^http/, 'ws')}/graphql`;
    const openTab = async () => {
      const page = await context.newPage();
      const tab = { page, calls: recordGraphql(page), sockets: recordSockets(page), errors: [] };
      page.on('pageerror', (e) => tab.errors.push(String(e)));
      await page.goto(`${appUrl}/?client=${client}`);
      await waitIdle(page);
      return tab;
    };
    const initOf = (socket) => socket.sent.find((m) => m.type === 'connection_init');
    const closedSoon = async (socket) => {
      for (let i = 0; i < 100 && !socket.closed; i++) await settle(20);
      return socket.closed;
    };

    const first = await openTab();
    const p1 = first.page;
    await p1.fill('#email', email);
    await p1.fill('#password', PASSWORD);
    await click(p1, 'register');
    await waitState(p1, (x) => x.live === 'open', 'the socket after register');
    await click(p1, 'logout');
    const registered = first.sockets[0];
    assert(registered && (await closedSoon(registered)) && registered.sent.some((m) => m.type === 'complete'),
      `the socket of the registration was not completed and closed on logout: ${JSON.stringify(registered)}`);
    await p1.fill('#email', email);
    await p1.fill('#password', PASSWORD);
    await click(p1, 'login');
    const s1 = await waitState(p1, (x) => x.state === 'logged-in' && x.live === 'open', 'tab 1 logged in with its socket open');
    const userId = s1.id;
    const sock1 = first.sockets.at(-1);
    const init1 = initOf(sock1);
    assert(sock1 !== registered && sock1.url === wsUrl, `socket URL ${sock1.url}, expected ${wsUrl}`);
    assert(init1 && Object.keys(init1.payload ?? {}).join() === 'Authorization' && /^Bearer \S+$/.test(init1.payload.Authorization),
      `connection_init: ${JSON.stringify(init1)}`);
    assert(sock1.received.some((m) => m.type === 'connection_ack'), `no connection_ack: ${JSON.stringify(sock1.received)}`);
    assert(sock1.sent.some((m) => m.type === 'subscribe' && /sessionEvents/.test(m.payload?.query ?? '')), 'no sessionEvents subscribe');
    step(`tab 1: register, logout (its socket sent complete and closed), login; socket ${wsUrl} opened with connection_init {"Authorization": "Bearer …"}, acknowledged, sessionEvents subscribed`);

    const second = await openTab();
    const p2 = second.page;
    const s2 = await waitState(p2, (x) => x.state === 'logged-in' && x.live === 'open', 'tab 2 resumed with its socket open');
    const resumedAt = Date.now();
    assert(s2.email === email && s2.id === userId, `tab 2 resumed another user: ${JSON.stringify(s2)}`);
    assert(second.calls.some((c) => c.op === 'RefreshToken' && c.body?.data?.refreshToken), 'tab 2 resumed without a cookie refresh?');
    step(`a second tab of the same context resumes the session through the cookie (${second.calls.map((c) => c.op).join(' ')}) and opens its own socket`);

    // Nothing happens for a while: past both access tokens' expiry (the socket
    // follows the session, not the token).
    const quietCalls = [first.calls.length, second.calls.length];
    await settle(Math.max(0, EXPIRY_WAIT_MS - (Date.now() - resumedAt)));
    for (const [i, tab] of [first, second].entries()) {
      const x = await uiState(tab.page);
      const socket = tab.sockets.at(-1);
      assert(x.state === 'logged-in' && x.hasToken === 'true' && x.live === 'open' && x.error === '',
        `tab ${i + 1} after a quiet while: ${JSON.stringify(x)}`);
      assert(!socket.closed && sessionEventsIn(socket).length === 0, `tab ${i + 1}'s socket: closed ${socket.closed}, events ${JSON.stringify(sessionEventsIn(socket))}`);
      assert(tab.calls.length === quietCalls[i], `tab ${i + 1} made requests while nothing happened`);
    }
    step(`both tabs stay logged in while nothing happens (${(EXPIRY_WAIT_MS / 1000).toFixed(1)}s, past the access tokens' expiry): sockets open, no event, no request`);

    if (mode === 'same') {
      // A network drop: graphql-ws reconnects, and the token in memory has
      // expired meanwhile, so connection_init must carry a renewed one.
      const before = [first, second].map((tab) => ({ sockets: tab.sockets.length, calls: tab.calls.length }));
      const cut = dropWebSockets(appUrl);
      assert(cut >= 2, `expected both tabs' sockets in the proxy, found ${cut}`);
      const t0 = Date.now();
      for (const [i, tab] of [first, second].entries()) {
        await waitState(tab.page, (x) => x.live === 'open' && tab.sockets.length > before[i].sockets, `tab ${i + 1} to reconnect`, 20_000);
        const x = await uiState(tab.page);
        assert(x.state === 'logged-in' && x.hasToken === 'true', `tab ${i + 1} after the drop: ${JSON.stringify(x)}`);
        const ops = tab.calls.slice(before[i].calls).map((c) => `${c.op}:${c.body?.data ? 'ok' : (c.body?.errors?.[0]?.extensions?.reason ?? '?')}`);
        assert(ops.includes('RefreshToken:ok'), `tab ${i + 1} reconnected without renewing its expired token: ${ops.join(' ')}`);
        const oldInit = initOf(tab.sockets[before[i].sockets - 1]);
        const newInit = initOf(tab.sockets.at(-1));
        assert(newInit?.payload?.Authorization && newInit.payload.Authorization !== oldInit?.payload?.Authorization,
          `tab ${i + 1} reconnected with its old token`);
      }
      step(`a dropped connection (the proxy cut ${cut} sockets) comes back in ${((Date.now() - t0) / 1000).toFixed(1)}s: each tab renewed its expired token through the cookie for connection_init, still logged in`);
    }

    // ROLE_CHANGED: an admin changes the user's role; both tabs show it at
    // once, from the event (no request).
    const roleCalls = [first.calls.length, second.calls.length];
    for (const role of ['ADMIN', 'USER']) {
      await setRole(apiUrl, userId, role);
      for (const [i, tab] of [first, second].entries()) {
        await waitState(tab.page, (x) => x.role === role, `tab ${i + 1} to show role ${role}`, 5000);
        assert(sessionEventsIn(tab.sockets.at(-1)).some((e) => e.kind === 'ROLE_CHANGED' && e.role === role), `tab ${i + 1}: no ROLE_CHANGED ${role} event`);
      }
    }
    for (const [i, tab] of [first, second].entries()) {
      const x = await uiState(tab.page);
      assert(x.state === 'logged-in' && x.live === 'open', `tab ${i + 1} after the role changes: ${JSON.stringify(x)}`);
      assert(tab.calls.length === roleCalls[i], `tab ${i + 1} made requests for the role change`);
    }
    step('ROLE_CHANGED: setUserRole by an admin shows in both tabs at once from the event (ADMIN, then USER again), no request');

    // The logout in tab 1 (brought to the front, as a user would; tab 2 is in
    // the background) shows in tab 2 within the deadline. The pages note when
    // the click happened and when tab 2 changed (one clock: Date.now()).
    await p1.bringToFront();
    await p1.evaluate(() =>
      document.getElementById('logout').addEventListener('click', () => (window.__e2eClickAt = Date.now()), { capture: true, once: true }));
    await p2.evaluate(() => {
      window.__e2eNoReload = true;
      const status = document.getElementById('status');
      new MutationObserver(() => {
        if (status.dataset.state === 'logged-out') window.__e2eLoggedOutAt ??= Date.now();
      }).observe(status, { attributes: true });
    });
    const sock1b = first.sockets.at(-1);
    const sock2 = second.sockets.at(-1);
    const calls1 = first.calls.length;
    const calls2 = second.calls.length;
    await p1.click('#logout');
    const done = await pollUntil(p1, (x) => x.state !== 'busy', Date.now() + 15_000, 5);
    assert(done?.state.state === 'logged-out' && done.state.hasToken === 'false', `logout in tab 1: ${JSON.stringify(done?.state)}`);
    const doneAt = done.at;
    const clickAt = await p1.evaluate(() => window.__e2eClickAt);
    const seen = await pollUntil(p2, (x) => x.state === 'logged-out', doneAt + LIVE_LOGOUT_DEADLINE_MS, 5);
    const x2 = await uiState(p2);
    assert(seen, `tab 2 still shows ${x2.state} ${LIVE_LOGOUT_DEADLINE_MS} ms after the logout in tab 1 completed: ${JSON.stringify(x2)}`);
    const delay = seen.at - doneAt;
    const pageAt = await p2.evaluate(() => window.__e2eLoggedOutAt ?? null);
    await settle(); // let response listeners parse bodies
    const logoutOps = first.calls.slice(calls1).map((c) => `${c.op}:${c.body?.data ? 'ok' : (c.body?.errors?.[0]?.extensions?.reason ?? '?')}`).join(' ');
    liveDelays.push({ scenario: `${client} ${mode}-origin`, polled: delay, click: pageAt - clickAt, logout: doneAt - clickAt });
    step(`logout in tab 1 (${logoutOps}; click to logged-out seen: ${doneAt - clickAt} ms) -> tab 2 seen logged out ${delay} ms after that (deadline ${LIVE_LOGOUT_DEADLINE_MS} ms); tab 2 changed ${pageAt - clickAt} ms after the click event`);

    assert(x2.hasToken === 'false' && x2.reason === 'SESSION_ENDED' && x2.live === 'ended', `tab 2 after the logout: ${JSON.stringify(x2)}`);
    assert(await p2.evaluate(() => window.__e2eNoReload === true), 'tab 2 reloaded');
    assert(second.calls.length === calls2, `tab 2 made requests: ${second.calls.slice(calls2).map((c) => c.op).join(' ')}`);
    assert(sessionEventsIn(sock2).some((e) => e.kind === 'SESSION_ENDED'), 'tab 2 received no SESSION_ENDED');
    assert(await closedSoon(sock2), "tab 2's socket is still open");
    step('tab 2: SESSION_ENDED received, token dropped, logged-out view with the reason, socket closed by the server; no reload, no request');

    const x1 = await uiState(p1);
    assert(x1.live === 'off' && x1.reason !== 'SESSION_ENDED', `tab 1 after its logout: ${JSON.stringify(x1)}`);
    assert((await closedSoon(sock1b)) && sock1b.sent.some((m) => m.type === 'complete'), "tab 1's socket was not completed and closed by its logout");
    step('tab 1: its logout completed the subscription and closed its socket');

    await click(p2, 'refresh-me');
    const after = await uiState(p2);
    assert(after.state === 'logged-out' && after.code === 'UNAUTHENTICATED' && after.live === 'ended', `refresh me in tab 2: ${JSON.stringify(after)}`);
    step(`"refresh me" in tab 2 confirms the session is gone (${after.error})`);

    const errors = [...first.errors, ...second.errors];
    assert(errors.length === 0, `uncaught errors in the pages: ${errors.join('; ')}`);
    step('no uncaught errors in the pages');
  } finally {
    await context.close();
  }
}

async function unlistedFlow(browser, allowedUrl, unlistedUrl, apiUrl, client, step) {
  const context = await browser.newContext();
  try {
    // A live session cookie exists in this browser (logged in on the allowed
    // origin; SameSite=Strict still sends it between 127.0.0.1 ports).
    const good = await context.newPage();
    const email = `e2e-${client}-unlisted-${Date.now()}@example.com`;
    await good.goto(`${allowedUrl}/?client=${client}`);
    await waitIdle(good);
    await good.fill('#email', email);
    await good.fill('#password', PASSWORD);
    await click(good, 'register');
    assert((await uiState(good)).state === 'logged-in', 'setup: register on the allowed origin failed');
    await good.close();
    assert((await context.cookies()).some((c) => c.name === 'refresh_token'), 'setup: no refresh cookie');
    step('setup: a live refresh cookie exists in the browser');

    const page = await context.newPage();
    const calls = recordGraphql(page);
    await page.goto(`${unlistedUrl}/?client=${client}`);
    await waitIdle(page);
    let s = await uiState(page);
    assert(s.state === 'logged-out' && s.hasToken === 'false', `unlisted origin resumed a session: ${JSON.stringify(s)}`);
    await click(page, 'refresh-me');
    s = await uiState(page);
    assert(s.state === 'logged-out' && s.hasToken === 'false', `unlisted origin obtained a session: ${JSON.stringify(s)}`);
    // CORS refuses the preflight, so the page cannot read any answer (a network
    // error, not an auth error: the client has nothing to refresh on).
    assert(calls.length > 0 && calls.every((c) => !c.body), `a response was readable from the unlisted origin: ${JSON.stringify(calls)}`);
    step(`"refresh me" from the unlisted origin fails without a token (${s.error || 'no error text'})`);

    // The refresh mutation itself, exactly as the app sends it, from that page.
    const direct = await page.evaluate(async (url) => {
      try {
        const res = await fetch(url, {
          method: 'POST',
          credentials: 'include',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body: JSON.stringify({ query: 'mutation { refreshToken { accessToken } }' }),
        });
        return `readable ${res.status} ${await res.text()}`;
      } catch (e) {
        return `blocked: ${e}`;
      }
    }, `${apiUrl}/graphql`);
    assert(direct.startsWith('blocked:'), `refreshToken from the unlisted origin was readable: ${direct}`);
    step(`a credentialed refreshToken fetch from the unlisted origin is blocked (${direct})`);

    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await click(page, 'login');
    s = await uiState(page);
    assert(s.state === 'logged-out' && s.hasToken === 'false', `login from the unlisted origin succeeded: ${JSON.stringify(s)}`);
    step('login from the unlisted origin cannot obtain a token either');

    // The subscription socket: refused before the upgrade (403), so the
    // browser sees the handshake fail; the allowed origin is upgraded.
    const wsUrl = `${apiUrl.replace(/^http/, 'ws')}/graphql`;
    const fromPage = await page.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url, 'graphql-transport-ws');
      ws.onopen = () => {
        ws.close();
        resolve('opened');
      };
      ws.onclose = (e) => resolve(`closed ${e.code}`);
    }), wsUrl);
    assert(fromPage === 'closed 1006', `a WebSocket from the unlisted origin: ${fromPage}`);
    const [unlistedStatus, allowedStatus] = await Promise.all([wsHandshake(apiUrl, unlistedUrl), wsHandshake(apiUrl, allowedUrl)]);
    assert(unlistedStatus === 403 && allowedStatus === 101, `handshake statuses: unlisted ${unlistedStatus}, allowed ${allowedStatus}`);
    step(`a WebSocket to ${wsUrl} from the unlisted origin is refused before the upgrade (in the page: ${fromPage}; the handshake with that Origin gets ${unlistedStatus}, with the allowed one ${allowedStatus})`);

    // What the server itself answers a credentialed refresh from that origin
    // (a browser would not let the page read it): FORBIDDEN CROSS_SITE_REQUEST.
    const cookie = (await context.cookies()).find((c) => c.name === 'refresh_token');
    const res = await fetch(`${apiUrl}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin: unlistedUrl, cookie: `refresh_token=${cookie.value}` },
      body: JSON.stringify({ query: 'mutation { refreshToken { accessToken } }' }),
    });
    const body = await res.json();
    assert(!res.headers.get('access-control-allow-origin'), 'server sent CORS headers to an unlisted origin');
    assert(body.errors?.[0]?.extensions?.code === 'FORBIDDEN' && body.errors[0].extensions.reason === 'CROSS_SITE_REQUEST' && !body.data?.refreshToken,
      `server answered the unlisted origin with ${JSON.stringify(body)}`);
    step('server answers a cookie refresh from the unlisted origin with FORBIDDEN CROSS_SITE_REQUEST and no CORS headers');
  } finally {
    await context.close();
  }
}

/** Waits until an <output> of the password pages leaves 'idle'/'busy'; returns what it says. */
async function waitOutput(page, id) {
  await page.waitForFunction(
    (id) => !['idle', 'busy', undefined].includes(document.getElementById(id)?.dataset.state),
    id,
    { timeout: 15_000 },
  );
  await settle(); // let response listeners parse bodies
  return page.evaluate((id) => {
    const o = document.getElementById(id);
    return { state: o.dataset.state, reason: o.dataset.reason, text: o.textContent };
  }, id);
}

/** Forgot password -> mail in MAIL_DIR -> the link in Chromium -> new password ->
 *  login with it; the link's second use; where the token went. */
async function resetFlow(browser, appUrl, client, step) {
  const stamp = Date.now();
  const email = `e2e-${client}-reset-${stamp}@example.com`;
  const unknown = `e2e-${client}-nobody-${stamp}@example.com`;
  const other = await browser.newContext();
  const context = await browser.newContext();
  try {
    // Another browser registers and stays logged in: the reset must end that session.
    const first = await other.newPage();
    await first.goto(`${appUrl}/?client=${client}`);
    await waitIdle(first);
    await first.fill('#email', email);
    await first.fill('#password', PASSWORD);
    await click(first, 'register');
    assert((await uiState(first)).state === 'logged-in', 'setup: register failed');
    step('setup: register in another browser, which stays logged in');

    const page = await context.newPage();
    const calls = recordGraphql(page);
    const requests = [];
    const consoleText = [];
    const pageErrors = [];
    page.on('request', (r) => requests.push(r));
    page.on('console', (m) => consoleText.push(m.text()));
    page.on('pageerror', (e) => pageErrors.push(String(e)));

    await page.goto(`${appUrl}/?client=${client}`);
    await waitIdle(page);
    await page.click('#forgot-link');
    await page.waitForSelector('#forgot-form', { state: 'visible' });
    const forgotUrl = new URL(page.url());
    assert(forgotUrl.pathname === '/forgot-password' && forgotUrl.searchParams.get('client') === client, `"Forgot password?" went to ${page.url()}`);
    await page.fill('#forgot-email', email);
    await page.click('#forgot-submit');
    const sent = await waitOutput(page, 'forgot-message');
    assert(sent.state === 'sent' && /if an account exists for that address/i.test(sent.text), `forgot-password form: ${JSON.stringify(sent)}`);
    assert(ok(calls, 'RequestPasswordReset'), 'no successful RequestPasswordReset call');
    await page.fill('#forgot-email', unknown);
    await page.click('#forgot-submit');
    const sentUnknown = await waitOutput(page, 'forgot-message');
    assert(sentUnknown.state === sent.state && sentUnknown.text === sent.text,
      `an unknown address got another answer: ${JSON.stringify(sentUnknown)} vs ${JSON.stringify(sent)}`);
    step(`forgot-password page: one message for a registered and an unknown address ("${sent.text}")`);

    const mail = await waitForResetMail(email, appUrl);
    const link = resetLinkIn(mail, appUrl);
    const token = new URL(link).searchParams.get('token');
    assert(/^[A-Za-z0-9_-]{43}$/.test(token ?? ''), `unexpected reset link ${link}`);
    const htmlHref = /href="([^"]*reset-password[^"]*)"/.exec(mail.html ?? '')?.[1];
    assert(htmlHref && decodeHtmlEntities(htmlHref) === link, `the HTML part links elsewhere: ${htmlHref}`);
    const encoded = mail.raw.includes(link) ? '' : ', quoted-printable decoded';
    step(`reset mail ${mail.file} ("${mail.headers.subject}") in MAIL_DIR; link from the text part${encoded}, same as the HTML part's`);

    // The link as a mail client opens it (for urql with the client switch added).
    const target = new URL(link);
    if (client !== 'apollo') target.searchParams.set('client', client);
    await page.goto(target.href);
    await page.waitForSelector('#reset-form', { state: 'visible' });
    const shown = new URL(page.url());
    assert(shown.pathname === '/reset-password' && !shown.searchParams.has('token') && !page.url().includes(token),
      `the token stayed in the address bar: ${page.url()}`);
    step(`the link opens the reset page, which takes the token out of the address bar (now ${shown.pathname}${shown.search})`);

    // The server's length rule (the field's own minlength is lifted to reach it).
    await page.evaluate(() => document.getElementById('new-password').removeAttribute('minlength'));
    await page.fill('#new-password', 'short');
    await page.click('#reset-submit');
    let out = await waitOutput(page, 'reset-message');
    assert(out.state === 'weak' && out.reason === 'WEAK_PASSWORD' && (await page.isVisible('#reset-form')), `weak password: ${JSON.stringify(out)}`);
    step(`a too-short password shows WEAK_PASSWORD and keeps the form ("${out.text}")`);

    await page.fill('#new-password', NEW_PASSWORD);
    await page.click('#reset-submit');
    out = await waitOutput(page, 'reset-message');
    assert(out.state === 'done' && /log in with your new password/i.test(out.text) && !(await page.isVisible('#reset-form')),
      `reset failed: ${JSON.stringify(out)}`);
    assert(ok(calls, 'ResetPassword'), 'no successful ResetPassword call');
    assert(!(await context.cookies()).some((c) => c.name === 'refresh_token'), 'resetPassword started a session');
    step(`new password set; the page says to log in with it, and no session was started ("${out.text}")`);

    await page.click('#reset-login');
    await waitIdle(page);
    let s = await uiState(page);
    assert(new URL(page.url()).pathname === '/' && s.state === 'logged-out', `"Log in" link: ${page.url()} ${JSON.stringify(s)}`);
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await click(page, 'login');
    s = await uiState(page);
    assert(s.state === 'logged-out' && s.reason === 'INVALID_CREDENTIALS', `the old password still works: ${JSON.stringify(s)}`);
    await page.fill('#password', NEW_PASSWORD);
    await click(page, 'login');
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email && s.hasToken === 'true', `login with the new password failed: ${JSON.stringify(s)}`);
    step('login through the UI: the old password is refused, the new one shows the logged-in state');

    s = await waitState(first, (x) => x.state === 'logged-out', "the other browser's page to show its session ended", 5000);
    assert(s.reason === 'SESSION_ENDED' && s.hasToken === 'false' && s.live === 'ended', `the other browser's page: ${JSON.stringify(s)}`);
    step('the other browser showed the end of its session at once, without a reload (sessionEvents: SESSION_ENDED)');

    await first.reload();
    await waitIdle(first);
    s = await uiState(first);
    assert(s.state === 'logged-out' && s.hasToken === 'false', `the other browser's session survived the reset: ${JSON.stringify(s)}`);
    step(`the other browser's session ended with the reset (after a reload: ${s.error})`);

    await page.goto(target.href);
    await page.waitForSelector('#reset-form', { state: 'visible' });
    await page.fill('#new-password', 'E2e-yet-another-password');
    await page.click('#reset-submit');
    out = await waitOutput(page, 'reset-message');
    assert(out.state === 'invalid' && out.reason === 'LINK_INVALID_OR_EXPIRED' && !(await page.isVisible('#reset-form')),
      `second use of the link: ${JSON.stringify(out)}`);
    step(`the same link a second time shows the invalid-link message ("${out.text}")`);

    await page.goto(`${appUrl}/reset-password?client=${client}`);
    out = await waitOutput(page, 'reset-message');
    assert(out.state === 'missing', `reset page without a token: ${JSON.stringify(out)}`);
    step('the reset page without a token asks for a new link');

    // Where the token went: into ResetPassword bodies and the two navigations
    // to the link, nowhere else (no other URL, no Referer, no other body, no console).
    const leaks = [];
    let resets = 0;
    for (const r of requests) {
      const url = r.url();
      if (url.includes(token) && !(r.isNavigationRequest() && url === target.href)) leaks.push(`URL ${url}`);
      let headers;
      try {
        headers = await r.allHeaders();
      } catch {
        headers = r.headers();
      }
      for (const [name, value] of Object.entries(headers)) {
        if (value.includes(token)) leaks.push(`${name} header of ${r.method()} ${url}`);
      }
      const body = r.postData() ?? '';
      if (opName(body) === 'ResetPassword') resets++;
      else if (body.includes(token)) leaks.push(`body of ${r.method()} ${url}`);
    }
    for (const line of consoleText) if (line.includes(token)) leaks.push(`console: ${line}`);
    assert(leaks.length === 0, `the token leaked: ${leaks.join('; ')}`);
    assert(resets === 3, `expected 3 ResetPassword requests, saw ${resets}`);
    step(`the token went nowhere but ResetPassword (${requests.length} requests: URLs, headers incl. Referer, bodies; console)`);

    assert(mailsTo(unknown).length === 0, `a mail went to the unknown address ${unknown}`);
    const others = mailsTo(email).filter((m) => !resetLinkIn(m, appUrl)).map((m) => `"${m.headers.subject}"`);
    step(`no mail to the unknown address; ${email} got the reset mail${others.length ? ` and ${others.join(', ')}` : ''}`);

    assert(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join('; ')}`);
    step('no uncaught errors in the page');
  } finally {
    await context.close();
    await other.close();
  }
}

// ---------------------------------------------------------------- second factor

/** RFC 4648 base32 (no padding) to bytes. */
function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** The code an authenticator app shows for `secret` at `ms` (RFC 6238: SHA-1, 6 digits, 30 s). */
function totp(secret, ms = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(ms / 1000 / 30)));
  const mac = crypto.createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

/** The second step typed into the page: the form shows, the code goes in, the session starts. */
async function secondStep(page, email, code, step, what) {
  await page.fill('#email', email);
  await page.fill('#password', PASSWORD);
  await page.click('#login');
  await waitIdle(page);
  let s = await uiState(page);
  assert(s.state === 'logged-out' && s.reason === 'SECOND_FACTOR_REQUIRED' && s.hasToken === 'false', `password login should stop at the second factor: ${JSON.stringify(s)}`);
  assert(await page.isVisible('#second-factor-form'), 'the second-factor form is not shown');
  step(`password login answers SECOND_FACTOR_REQUIRED, no token; the page asks for ${what}`);
  await page.fill('#second-factor-code', code);
  await page.click('#second-factor-submit');
  await waitIdle(page);
  s = await uiState(page);
  assert(s.state === 'logged-in' && s.email === email && s.hasToken === 'true', `${what} did not sign in: ${JSON.stringify(s)}`);
  assert(!(await page.isVisible('#second-factor-form')), 'the second-factor form stays after the sign-in');
  step(`${what} finishes the login`);
}

/** Password + TOTP, then password + recovery code, through the page; the account is set up as a native app would. */
async function totpFlow(browser, appUrl, apiUrl, client, step) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const email = `e2e-totp-${client}-${Date.now()}@example.com`;
    const { register } = await gql(apiUrl, 'mutation($i: RegisterInput!) { register(input: $i) { accessToken } }', { i: { email, password: PASSWORD, transport: 'BODY' } });
    const token = register.accessToken;
    const { enrollTotp } = await gql(apiUrl, 'mutation { enrollTotp { secret otpauthUri qrCodeSvg } }', {}, token);
    const { secret, otpauthUri, qrCodeSvg } = enrollTotp;
    assert(otpauthUri.startsWith('otpauth://totp/') && qrCodeSvg.startsWith('data:image/svg+xml;base64,'), JSON.stringify(enrollTotp));
    const { confirmTotp: recovery } = await gql(apiUrl, 'mutation($c: String!) { confirmTotp(code: $c) }', { c: totp(secret) }, token);
    assert(Array.isArray(recovery) && recovery.length === 10, `confirmTotp: ${JSON.stringify(recovery)}`);
    step('authenticator enrolled with a code computed from the secret; ten recovery codes');

    await page.goto(`${appUrl}/?client=${client}`);
    await waitIdle(page);
    // The confirming code's step is spent: the next step's code (+30 s, within the skew).
    await secondStep(page, email, totp(secret, Date.now() + 30_000), step, 'a TOTP code');
    await page.reload();
    await waitIdle(page);
    let s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email, `the session did not survive a reload: ${JSON.stringify(s)}`);
    step('the session survives a reload (the cookie came with verifySecondFactor)');
    await click(page, 'logout');

    await secondStep(page, email, recovery[0], step, 'a recovery code');
    await click(page, 'logout');
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await page.click('#login');
    await waitIdle(page);
    await page.fill('#second-factor-code', recovery[0]);
    await page.click('#second-factor-submit');
    await waitIdle(page);
    s = await uiState(page);
    assert(s.state === 'logged-out' && s.reason === 'INVALID_SECOND_FACTOR', `a used recovery code worked again: ${JSON.stringify(s)}`);
    step('a used recovery code is refused with INVALID_SECOND_FACTOR');
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  } finally {
    await context.close();
  }
}

/** Passkeys in Chromium's virtual authenticator (DevTools WebAuthn domain): add
 *  one, sign in with it alone, and as a password login's second factor. */
async function passkeyFlow(browser, appUrl, otherUrl, client, step) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const cdp = await context.newCDPSession(page);
    await cdp.send('WebAuthn.enable');
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
    });
    const email = `e2e-passkey-${client}-${Date.now()}@example.com`;
    await page.goto(`${appUrl}/?client=${client}`);
    await waitIdle(page);
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await click(page, 'register');
    let s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email, `register failed: ${JSON.stringify(s)}`);

    await page.click('#add-passkey');
    await page.waitForFunction(() => document.getElementById('passkey-status')?.dataset.state !== 'busy', null, { timeout: 15_000 });
    const added = await page.evaluate(() => ({ state: document.getElementById('passkey-status').dataset.state, text: document.getElementById('passkey-status').textContent }));
    assert(added.state === 'added', `adding a passkey failed: ${JSON.stringify(added)}`);
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    assert(credentials.length === 1 && credentials[0].isResidentCredential, `expected one discoverable credential: ${JSON.stringify(credentials.map((c) => ({ rk: c.isResidentCredential, rp: c.rpId })))}`);
    assert(credentials[0].rpId === 'localhost', `credential bound to ${credentials[0].rpId}`);
    step('a passkey is added: one discoverable credential for rpId localhost in the authenticator');

    await click(page, 'logout');
    await click(page, 'passkey-login');
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email && s.hasToken === 'true', `passkey sign-in failed: ${JSON.stringify(s)}`);
    const { credentials: after } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    assert(after[0].signCount >= 1, `the authenticator's counter did not move: ${after[0].signCount}`);
    step('"Sign in with a passkey" signs in with no address typed');
    await page.reload();
    await waitIdle(page);
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email, `the passkey session did not survive a reload: ${JSON.stringify(s)}`);
    step('the passkey session survives a reload (refresh cookie)');

    await click(page, 'logout');
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    await page.click('#login');
    await waitIdle(page);
    s = await uiState(page);
    assert(s.reason === 'SECOND_FACTOR_REQUIRED' && s.hasToken === 'false', `a passkey is a second factor: ${JSON.stringify(s)}`);
    await click(page, 'second-factor-passkey');
    s = await uiState(page);
    assert(s.state === 'logged-in' && s.email === email, `passkey as the second factor failed: ${JSON.stringify(s)}`);
    step('password + passkey: the passkey finishes a login that answered SECOND_FACTOR_REQUIRED');

    // The same app on an origin outside WEBAUTHN_ORIGINS (127.0.0.1: an IP, not
    // the relying party's domain) gets options for rpId localhost, which the
    // browser refuses there: no sign-in.
    const other = await context.newPage();
    await other.goto(`${otherUrl}/?client=${client}`);
    await waitIdle(other);
    await other.click('#passkey-login');
    await waitIdle(other);
    s = await uiState(other);
    assert(s.state === 'logged-out' && /SecurityError|invalid domain|relying party/i.test(s.error), `a foreign origin used the passkey: ${JSON.stringify(s)}`);
    step(`on another origin the passkey is refused (${s.error.slice(0, 80)})`);
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  } finally {
    await context.close();
  }
}

/** GraphiQL, served by authgraph from its own binary, loads and runs a query with
 *  no request leaving 127.0.0.1 (no CDN). */
async function graphiqlFlow(browser, apiUrl, step) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const foreign = [];
    const pageErrors = [];
    page.on('request', (req) => {
      const u = new URL(req.url());
      if (u.protocol !== 'data:' && u.hostname !== '127.0.0.1') foreign.push(req.url());
    });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const calls = recordGraphql(page);
    await page.goto(`${apiUrl}/`);
    await page.waitForSelector('.graphiql-container', { timeout: 20_000 });
    step('GraphiQL renders from the binary');
    await page.click('.graphiql-execute-button');
    await page.waitForFunction(
      () => (document.querySelector('.result-window')?.textContent ?? '').includes('MISSING_TOKEN'),
      null,
      { timeout: 15_000 },
    );
    // The response listener parses bodies asynchronously: give it a moment.
    const answered = () => calls.some((c) => c.body?.errors?.[0]?.extensions?.reason === 'MISSING_TOKEN');
    for (let i = 0; i < 50 && !answered(); i++) await settle(100);
    assert(answered(), `no query answer seen: ${JSON.stringify(calls.map((c) => ({ op: c.op, status: c.status, errors: c.body?.errors })))}`);
    step('the default `me` query runs and shows the MISSING_TOKEN answer');
    assert(foreign.length === 0, `requests left 127.0.0.1: ${foreign.join(', ')}`);
    assert(pageErrors.length === 0, `uncaught errors in GraphiQL: ${pageErrors.join('; ')}`);
    step('no request left 127.0.0.1; no page errors');
  } finally {
    await context.close();
  }
}

// ---------------------------------------------------------------- main

async function main() {
  const started = Date.now();
  assert(fs.existsSync(path.join(DIST, 'index.html')), `no build in ${DIST}; run "npm run build" first`);
  assert(fs.existsSync(AUTHGRAPH_BIN), `authgraph binary not found at ${AUTHGRAPH_BIN} (set AUTHGRAPH_BIN)`);
  assert(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}`);

  // Ports first: the allowed app origin must be in CORS_ALLOWED_ORIGINS at start.
  const crossDist = path.join(tmp, 'dist-cross');
  let apiUrl = null;
  const sameUrl = await startStatic(() => DIST, () => apiUrl);
  const crossUrl = await startStatic(() => crossDist);
  const unlistedUrl = await startStatic(() => crossDist);
  // One same-origin server per client for the two-tab scenario, whose
  // WebSockets it cuts to simulate a network drop without touching the others.
  const liveUrls = { apollo: await startStatic(() => DIST, () => apiUrl), urql: await startStatic(() => DIST, () => apiUrl) };
  // Passkeys need a domain (WebAuthn refuses an IP address as relying party):
  // the same-origin app once more, opened as http://localhost (a secure context).
  const passkeyUrl = (await startStatic(() => DIST, () => apiUrl)).replace('127.0.0.1', 'localhost');
  // Mailed links open the same-origin app (APP_URL).
  const ag = await startAuthgraph([crossUrl], sameUrl, { WEBAUTHN_RP_ID: 'localhost', WEBAUTHN_ORIGINS: passkeyUrl });
  apiUrl = ag.url;
  log(`authgraph ${apiUrl} | same-origin app ${sameUrl} | cross-origin app ${crossUrl} (allowed) | unlisted app ${unlistedUrl} | MAIL_DIR ${MAIL_DIR}`);

  // The cross-origin variant of the app: same code, VITE_GRAPHQL_URL at authgraph.
  process.env.VITE_GRAPHQL_URL = `${apiUrl}/graphql`;
  await build({ root: ROOT, logLevel: 'warn', build: { outDir: crossDist, emptyOutDir: true } });
  delete process.env.VITE_GRAPHQL_URL;

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  cleanups.push(() => browser.close());

  const scenarios = [['graphiql offline', (step) => graphiqlFlow(browser, apiUrl, step)]];
  for (const client of ['apollo', 'urql']) {
    scenarios.push([`${client} same-origin`, (step) => allowedFlow(browser, sameUrl, client, 'same', step)]);
    scenarios.push([`${client} cross-origin`, (step) => allowedFlow(browser, crossUrl, client, 'cross', step)]);
    scenarios.push([`${client} unlisted-origin`, (step) => unlistedFlow(browser, crossUrl, unlistedUrl, apiUrl, client, step)]);
    scenarios.push([`${client} password reset`, (step) => resetFlow(browser, sameUrl, client, step)]);
    scenarios.push([`${client} live logout, same-origin`, (step) => liveFlow(browser, liveUrls[client], apiUrl, client, 'same', step)]);
    scenarios.push([`${client} live logout, cross-origin`, (step) => liveFlow(browser, crossUrl, apiUrl, client, 'cross', step)]);
    scenarios.push([`${client} password + TOTP, recovery code`, (step) => totpFlow(browser, sameUrl, apiUrl, client, step)]);
    scenarios.push([`${client} passkeys`, (step) => passkeyFlow(browser, passkeyUrl, sameUrl, client, step)]);
  }

  // The scenarios are independent (own browser context, own user), so they run
  // concurrently to keep the token-expiry waits from adding up.
  // E2E_ONLY=word runs only the scenarios whose name contains it (for debugging).
  const only = process.env.E2E_ONLY;
  const results = await Promise.all(
    scenarios.filter(([name]) => !only || name.includes(only)).map(async ([name, fn]) => {
      const lines = [];
      const t0 = Date.now();
      try {
        await fn((msg) => lines.push(`    ok ${msg}`));
        return { name, ok: true, lines, ms: Date.now() - t0 };
      } catch (e) {
        lines.push(`    FAILED ${e?.stack ?? e}`);
        return { name, ok: false, lines, ms: Date.now() - t0 };
      }
    }),
  );
  for (const r of results) {
    log(`${r.ok ? 'PASS' : 'FAIL'} ${r.name} (${(r.ms / 1000).toFixed(1)}s)`);
    for (const l of r.lines) log(l);
    if (r.ok) passed++;
    else failed++;
  }
  if (failed) {
    log('--- authgraph log (tail) ---');
    log(fs.readFileSync(ag.logFile, 'utf8').slice(-4000));
  }
  for (const d of liveDelays) {
    log(`live logout ${d.scenario}: tab 2 seen logged out ${d.polled} ms after the logout in tab 1 completed (deadline ${LIVE_LOGOUT_DEADLINE_MS} ms); tab 2 changed ${d.click} ms after the click event (the logout itself took ${d.logout} ms)`);
  }
  log(`total ${((Date.now() - started) / 1000).toFixed(1)}s`);
  // E2E_LOG=file keeps a copy of authgraph's log (the temporary folder is removed).
  if (process.env.E2E_LOG) fs.copyFileSync(ag.logFile, process.env.E2E_LOG);
}

try {
  await main();
} catch (e) {
  failed++;
  console.error(`e2e setup failed: ${e?.stack ?? e}`);
} finally {
  await cleanup();
  clearTimeout(watchdog);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
