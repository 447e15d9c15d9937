import { createClient, type Client } from 'graphql-ws';
import { GRAPHQL_WS_URL } from './config';
import { freshAccessToken } from './auth';

/**
 * How authgraph closes a subscription socket when it will not follow a
 * session: 4401 (connection_init carried no token, or an expired one: refresh
 * and connect again), 4403 (a forged token or an ended session; also right
 * after SESSION_ENDED: log in again). Nothing is acknowledged.
 */
export const SESSION_CLOSE_CODES: ReadonlySet<number> = new Set([4401, 4403]);

const closeCode = (e: unknown): number | null =>
  typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'number' ? e.code : null;

/**
 * The `graphql-ws` client both GraphQL clients use for subscriptions (Apollo
 * through `GraphQLWsLink`, urql through `subscriptionExchange`). Lazy: the
 * socket opens with the first subscription and closes with the last one.
 */
export function createSessionSocket(): Client {
  return createClient({
    url: GRAPHQL_WS_URL,
    // Called at every (re)connect: the access token from memory, renewed
    // through the cookie first if it has expired (after a dropped connection).
    connectionParams: async () => {
      const token = await freshAccessToken();
      return token ? { Authorization: `Bearer ${token}` } : {};
    },
    // 4401: the token had expired: connect again (connectionParams renews it
    // first; graphql-ws gives up after its retry attempts). 4403: the session
    // is over: no retry (graphql-ws would retry it). Dropped connections (1006
    // and the like) are retried as usual.
    shouldRetry: (e) => closeCode(e) !== 4403,
  });
}

export type SocketState = 'connecting' | 'open' | 'closed';

/** What a page hears from `AuthApi.sessionEvents`. */
export interface SessionObserver<E> {
  /** One `sessionEvents` event. */
  next(event: E): void;
  /** The socket is connecting, open (connection_init acknowledged) or closed (with its close code). */
  socket?(state: SocketState, code?: number | null): void;
  /** The subscription failed. `closeCode`: how the socket closed (4401/4403: no live session), null when it did not. */
  error(closeCode: number | null, error: unknown): void;
}

/**
 * Runs `subscribe` (the GraphQL client's own subscription) and reports the
 * socket's life from `ws` along with it. Returns the unsubscribe function; once
 * it is called the observer hears nothing more, and the lazy socket closes.
 */
export function followSession<E>(
  ws: Client,
  subscribe: (sink: { next(event: E): void; error(error: unknown): void }) => () => void,
  observer: SessionObserver<E>,
): () => void {
  let active = true;
  let lastClose: number | null = null;
  const unlisten = [
    ws.on('connecting', () => active && observer.socket?.('connecting')),
    ws.on('connected', () => {
      lastClose = null;
      if (active) observer.socket?.('open');
    }),
    // Emitted before the subscription hears of the close.
    ws.on('closed', (event) => {
      lastClose = closeCode(event);
      if (active) observer.socket?.('closed', lastClose);
    }),
  ];
  const unsubscribe = subscribe({
    next: (event) => active && observer.next(event),
    error: (error) => active && observer.error(lastClose, error),
  });
  return () => {
    if (!active) return;
    active = false;
    for (const off of unlisten) off();
    unsubscribe();
  };
}
