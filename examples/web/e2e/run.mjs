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
// Prints "N passed, M failed" last and exits non-zero on any failure.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
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
// ACCESS_TOKEN_TTL=2s plus the server's 5 s leeway: rejected ~7 s after issue.
const TTL = '2s';
const EXPIRY_WAIT_MS = 8500;
const OVERALL_TIMEOUT_MS = 170_000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authgraph-web-e2e-'));
const cleanups = [];
let passed = 0;
let failed = 0;

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

/** A static file server for a built app; with `proxyTo()`, /graphql goes to authgraph keeping Host. */
async function startStatic(getDir, proxyTo) {
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
    let file = path.normalize(path.join(dir, decodeURIComponent(url.pathname)));
    if (!file.startsWith(dir)) {
      res.writeHead(403);
      return res.end();
    }
    if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) file = path.join(dir, 'index.html');
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  return `http://127.0.0.1:${server.address().port}`;
}

async function startAuthgraph(allowedOrigins) {
  const logFile = path.join(tmp, 'authgraph.log');
  const out = fs.openSync(logFile, 'w');
  const child = spawn(AUTHGRAPH_BIN, ['serve'], {
    env: {
      ...process.env,
      DATABASE_URL: `sqlite://${path.join(tmp, 'e2e.db')}?mode=rwc`,
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
      RUST_LOG: process.env.RUST_LOG || 'info',
      NO_COLOR: '1',
    },
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
    };
  });
}

async function click(page, id) {
  await page.click(`#${id}`);
  await waitIdle(page);
}

const ok = (calls, op) => calls.some((c) => c.op === op && c.body?.data?.[lcFirst(op)] && !c.body.errors);
const lcFirst = (s) => s[0].toLowerCase() + s.slice(1);

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
    step('logout clears the session and the cookie');

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
  const ag = await startAuthgraph([crossUrl]);
  apiUrl = ag.url;
  log(`authgraph ${apiUrl} | same-origin app ${sameUrl} | cross-origin app ${crossUrl} (allowed) | unlisted app ${unlistedUrl}`);

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
  }

  // The scenarios are independent (own browser context, own user), so they run
  // concurrently to keep the token-expiry waits from adding up.
  const results = await Promise.all(
    scenarios.map(async ([name, fn]) => {
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
  log(`total ${((Date.now() - started) / 1000).toFixed(1)}s`);
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
