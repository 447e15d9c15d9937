import { print, type GraphQLFormattedError } from 'graphql';
import { GRAPHQL_URL } from './config';
import { RefreshTokenDocument } from './operations';
import type { RefreshTokenMutation } from './gql/graphql';

// The access token lives in memory only: never localStorage, sessionStorage or
// a readable cookie. A reload loses it; the HttpOnly refresh cookie brings it back.
let accessToken: string | null = null;
// When it stops working by its `expiresIn` (this page's clock; Infinity when not told).
let expiresAt = 0;

export const getAccessToken = (): string | null => accessToken;
export const setAccessToken = (token: string | null, expiresIn?: number): void => {
  accessToken = token;
  expiresAt = token === null ? 0 : expiresIn === undefined ? Infinity : Date.now() + expiresIn * 1000;
};

/**
 * The token in memory while it has not expired, else a new one through the
 * cookie (null when the session cannot be renewed). For the WebSocket's
 * connection_init, which has no refresh-and-retry of its own: a socket that
 * reconnects after a drop must not present a token that died meanwhile.
 */
export function freshAccessToken(): Promise<string | null> {
  return accessToken !== null && Date.now() < expiresAt ? Promise.resolve(accessToken) : refreshAccessToken();
}

/** Errors after which a cookie refresh and one retry can help. */
const REFRESHABLE_REASONS = new Set(['ACCESS_TOKEN_EXPIRED', 'MISSING_TOKEN']);

export function isRefreshableError(error: Pick<GraphQLFormattedError, 'extensions'>): boolean {
  const ext = error.extensions ?? {};
  return ext.code === 'UNAUTHENTICATED' && REFRESHABLE_REASONS.has(String(ext.reason));
}

let inFlight: Promise<string | null> | null = null;

/**
 * `mutation { refreshToken { accessToken } }` with the refresh cookie. Concurrent
 * callers share one request (the server rotates the token on every refresh).
 * Resolves to the new access token, or null when the session cannot be renewed.
 */
export function refreshAccessToken(): Promise<string | null> {
  inFlight ??= (async () => {
    try {
      const res = await fetch(GRAPHQL_URL, {
        method: 'POST',
        credentials: 'include',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ operationName: 'RefreshToken', query: print(RefreshTokenDocument) }),
      });
      const body = (await res.json()) as { data?: RefreshTokenMutation | null; errors?: GraphQLFormattedError[] };
      const token = body.data?.refreshToken.accessToken ?? null;
      setAccessToken(token, body.data?.refreshToken.expiresIn);
      return token;
    } catch {
      // Network failure, or CORS refused to let us read the answer.
      setAccessToken(null);
      return null;
    } finally {
      inFlight = null;
    }
  })();
  return inFlight;
}
