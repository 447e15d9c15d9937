import type { Role, SessionEventsSubscription } from './gql/graphql';
import type { SessionObserver } from './live';

export interface Viewer {
  id: string;
  email: string;
  role: Role;
}

/** One `sessionEvents` event: SESSION_ENDED (the last), or ROLE_CHANGED with the new role. */
export type SessionEvent = SessionEventsSubscription['sessionEvents'];

/** What the UI needs from a GraphQL client; implemented with Apollo and with urql. */
export interface AuthApi {
  readonly name: 'apollo' | 'urql';
  register(email: string, password: string): Promise<Viewer>;
  /**
   * Rejects with an ApiError whose reason is SECOND_FACTOR_REQUIRED (and whose
   * `challenge` is set) when the account has a second factor: finish with
   * `verifySecondFactor`, or `passkeyLogin(challenge)`.
   */
  login(email: string, password: string): Promise<Viewer>;
  /** `verifySecondFactor`: the login's challenge and a TOTP or recovery code. */
  verifySecondFactor(challenge: string, code: string): Promise<Viewer>;
  /** A sign-in with a passkey: any the browser holds for this site, or, with a login's challenge, its second factor. */
  passkeyLogin(challenge?: string): Promise<Viewer>;
  /** Registers a passkey for the signed-in user (needs a recent sign-in). */
  addPasskey(name: string): Promise<void>;
  me(): Promise<Viewer>;
  logout(): Promise<void>;
  /** `requestPasswordReset`: true for every well-formed address, registered or not. */
  requestPasswordReset(email: string): Promise<boolean>;
  /** `resetPassword` with the token of a mailed link; ends every session of the account and logs nobody in. */
  resetPassword(token: string, newPassword: string): Promise<void>;
  /**
   * Subscribes to `sessionEvents` over a WebSocket (graphql-transport-ws; the
   * socket opens with the in-memory access token). Returns the unsubscribe
   * function, which also closes the socket. Errors reach the observer as ApiError.
   */
  sessionEvents(observer: SessionObserver<SessionEvent>): () => void;
  /** The session ended elsewhere: drops the access token and whatever the client cached, without a request. */
  forget(): void;
}

/** An error with the GraphQL `extensions.code` / `extensions.reason` kept for the UI. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly code?: string,
    readonly reason?: string,
    /** With SECOND_FACTOR_REQUIRED: the login's challenge (memory only, single use, 5 minutes). */
    readonly challenge?: string,
  ) {
    super(message);
  }
  static from(errors: readonly { message: string; extensions?: Record<string, unknown> }[] | undefined, fallback: unknown): ApiError {
    const first = errors?.[0];
    if (first) {
      const ext = first.extensions ?? {};
      return new ApiError(
        first.message,
        ext.code as string | undefined,
        ext.reason as string | undefined,
        typeof ext.challenge === 'string' ? ext.challenge : undefined,
      );
    }
    return new ApiError(fallback instanceof Error ? fallback.message : String(fallback));
  }
}
