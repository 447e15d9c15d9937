/** GraphQL endpoint: same-origin `/graphql` (proxied by Vite) unless VITE_GRAPHQL_URL says otherwise. */
export const GRAPHQL_URL: string = import.meta.env.VITE_GRAPHQL_URL || '/graphql';

/** The same endpoint for subscriptions (a WebSocket upgrade of `GET /graphql`):
 *  ws(s)://<this host>/graphql by default, else VITE_GRAPHQL_URL with ws(s). */
export const GRAPHQL_WS_URL: string = toWebSocketUrl(GRAPHQL_URL);

function toWebSocketUrl(httpUrl: string): string {
  const url = new URL(httpUrl, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.hash = '';
  return url.href;
}

/** The page that asks for a reset link by mail. */
export const FORGOT_PASSWORD_PATH = '/forgot-password';

/** The page the mailed reset link opens: authgraph's `APP_URL` + `RESET_PASSWORD_PATH` (default `/reset-password`) + `?token=`. */
export const RESET_PASSWORD_PATH = '/reset-password';
