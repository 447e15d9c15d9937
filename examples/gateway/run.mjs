// Services that verify authgraph's access tokens themselves, from its JWK Set,
// against a real authgraph on 127.0.0.1 (signing ES256, the default of a new
// install):
//
//   jose      createRemoteJWKSet + jwtVerify (Node)
//   PyJWT     PyJWKClient + jwt.decode (Python; run with $PYTHON)
//   gateway   GraphQL Yoga with @graphql-yoga/plugin-jwt, pointed at the JWKS
//             URL, in front of a tiny upstream HTTP service
//
// Each must accept a token authgraph issued and refuse a forged, an expired and
// a foreign-key one; the gateway must let a signed-in request through to the
// upstream and stop the others before it. Run: AUTHGRAPH_BIN=… PYTHON=… node run.mjs
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { createRemoteJWKSet, jwtVerify, generateKeyPair, SignJWT, decodeProtectedHeader, decodeJwt } from 'jose';
import { createYoga, createSchema } from 'graphql-yoga';
import { useJWT, createRemoteJwksSigningKeyProvider, extractFromHeader } from '@graphql-yoga/plugin-jwt';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const AUTHGRAPH_BIN = process.env.AUTHGRAPH_BIN || '/var/tmp/authgraph-target/debug/authgraph';
const PYTHON = process.env.PYTHON || 'python3';
const ISSUER = 'authgraph';
const AUDIENCE = 'authgraph';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authgraph-verifiers-'));
const cleanups = [];
let failures = 0;

function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'}  ${what}`);
  if (!ok) failures += 1;
}

async function startAuthgraph(env) {
  const logFile = path.join(tmp, `authgraph-${cleanups.length}.log`);
  const child = spawn(AUTHGRAPH_BIN, ['serve'], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: `sqlite://${path.join(tmp, `verifiers-${cleanups.length}.db`)}?mode=rwc`,
      LISTEN_ADDR: '127.0.0.1:0',
      KEY_ENCRYPTION_SECRET: 'verifiers-key-encryption-secret-0123456789',
      COOKIE_SECURE: 'false',
      RUST_LOG: 'info',
      NO_COLOR: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });
  child.stderr.on('data', (chunk) => fs.appendFileSync(logFile, chunk));
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error('authgraph did not report its address within 30s')), 30_000);
    child.stdout.on('data', (chunk) => {
      fs.appendFileSync(logFile, chunk);
      if (buf === null) return;
      buf += chunk.toString();
      const m = buf.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(t);
        buf = null;
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`authgraph exited (${code}); log:\n${fs.readFileSync(logFile, 'utf8').slice(-3000)}`));
    });
  });
}

async function gql(base, query, variables, token) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return res.json();
}

async function register(base, email) {
  const v = await gql(
    base,
    'mutation($i: RegisterInput!) { register(input: $i) { accessToken user { id } } }',
    { i: { email, password: 'correct horse battery staple', transport: 'BODY' } },
  );
  if (!v.data) throw new Error(`register failed: ${JSON.stringify(v)}`);
  return { token: v.data.register.accessToken, id: v.data.register.user.id };
}

// A token whose payload was edited after signing (the signature kept).
function forged(token) {
  const [h, p, s] = token.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
  claims.role = 'ADMIN';
  return [h, Buffer.from(JSON.stringify(claims)).toString('base64url'), s].join('.');
}

// The same claims, signed by a key of our own under authgraph's kid.
async function foreign(token) {
  const { privateKey } = await generateKeyPair('ES256');
  const header = decodeProtectedHeader(token);
  return new SignJWT(decodeJwt(token)).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: header.kid }).sign(privateKey);
}

async function withJose(jwksUrl, token) {
  const jwks = createRemoteJWKSet(new URL(jwksUrl));
  try {
    const { payload } = await jwtVerify(token, jwks, { issuer: ISSUER, audience: AUDIENCE });
    return payload.sub;
  } catch {
    return null;
  }
}

async function withPyJwt(jwksUrl, token) {
  try {
    const { stdout } = await promisify(execFile)(PYTHON, [path.join(HERE, 'verify_pyjwt.py'), jwksUrl, token, ISSUER, AUDIENCE]);
    return stdout.trim() || null;
  } catch {
    return null;
  }
}

async function startUpstream() {
  const server = http.createServer((req, res) => {
    const user = new URL(req.url, 'http://x').searchParams.get('user');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ greeting: `hello ${user}` }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

// The gateway: GraphQL Yoga with the JWT plugin, configured as its docs show
// (remote JWKS, the algorithm, issuer and audience); signed-in requests reach
// the upstream with the token's subject.
async function startGateway(jwksUri, upstream) {
  let upstreamCalls = 0;
  const yoga = createYoga({
    schema: createSchema({
      typeDefs: 'type Query { greeting: String }',
      resolvers: {
        Query: {
          greeting: async (_, __, ctx) => {
            if (!ctx.jwt) throw new Error('not signed in');
            upstreamCalls += 1;
            const r = await fetch(`${upstream}/?user=${encodeURIComponent(ctx.jwt.payload.sub)}`);
            return (await r.json()).greeting;
          },
        },
      },
    }),
    plugins: [
      useJWT({
        signingKeyProviders: [createRemoteJwksSigningKeyProvider({ jwksUri })],
        tokenLookupLocations: [extractFromHeader({ name: 'authorization', prefix: 'Bearer' })],
        tokenVerification: { issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'] },
        reject: { missingToken: true, invalidToken: true },
      }),
    ],
    logging: false,
  });
  const server = http.createServer(yoga);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise((r) => server.close(r)));
  const url = `http://127.0.0.1:${server.address().port}/graphql`;
  return {
    calls: () => upstreamCalls,
    ask: async (token) => {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify({ query: '{ greeting }' }),
      });
      const body = await res.json().catch(() => ({}));
      return body?.data?.greeting ?? null;
    },
  };
}

async function main() {
  // An authgraph whose tokens live 3 s, for the expired case.
  const base = await startAuthgraph({ ACCESS_TOKEN_TTL: '3s' });
  const jwksUrl = `${base}/.well-known/jwks.json`;
  const discovery = await (await fetch(`${base}/.well-known/openid-configuration`)).json();
  check(discovery.jwks_uri === jwksUrl, `discovery points at the JWK Set (${discovery.jwks_uri})`);

  const expiring = await register(base, 'soon@example.com');
  const { token, id } = await register(base, 'alice@example.com');
  const upstream = await startUpstream();
  const gateway = await startGateway(discovery.jwks_uri, upstream);

  check((await withJose(jwksUrl, token)) === id, 'jose accepts a token authgraph issued');
  check((await withPyJwt(jwksUrl, token)) === id, 'PyJWT accepts a token authgraph issued');
  check((await gateway.ask(token)) === `hello ${id}`, 'the gateway lets a signed-in request through to the upstream');

  const bad = { forged: forged(token), 'foreign key': await foreign(token) };
  await new Promise((r) => setTimeout(r, 4500));
  bad.expired = expiring.token;
  const before = gateway.calls();
  for (const [what, t] of Object.entries(bad)) {
    check((await withJose(jwksUrl, t)) === null, `jose refuses the ${what} token`);
    check((await withPyJwt(jwksUrl, t)) === null, `PyJWT refuses the ${what} token`);
    check((await gateway.ask(t)) === null, `the gateway refuses the ${what} token`);
  }
  check((await gateway.ask(null)) === null, 'the gateway refuses a request without a token');
  check(gateway.calls() === before, 'no refused request reached the upstream');
}

try {
  await main();
} catch (e) {
  console.error(e);
  failures += 1;
} finally {
  for (const c of cleanups.reverse()) await c();
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.log(failures === 0 ? 'all verifiers agree' : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
