import { defineConfig } from 'vite';

// Same-origin setup: the dev and preview servers proxy /graphql to authgraph,
// so the refresh cookie is first-party and no CORS is involved.
// AUTHGRAPH_URL=http://127.0.0.1:8000 npm run dev
const target = process.env.AUTHGRAPH_URL ?? 'http://127.0.0.1:8000';

const proxy = {
  // Host is kept as the app's (no changeOrigin), so authgraph sees a
  // same-origin request: Origin and Host name the same server. `ws: true`
  // also forwards WebSocket upgrades of /graphql (the sessionEvents
  // subscription, ws://<this host>/graphql).
  '/graphql': { target, changeOrigin: false, ws: true },
};

export default defineConfig({
  server: { proxy },
  preview: { proxy },
});
