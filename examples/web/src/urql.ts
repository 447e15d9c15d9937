import { Client, cacheExchange, fetchExchange, subscriptionExchange, type CombinedError } from '@urql/core';
import { authExchange } from '@urql/exchange-auth';
import { GRAPHQL_URL } from './config';
import { getAccessToken, isRefreshableError, refreshAccessToken, setAccessToken } from './auth';
import { createSessionSocket, followSession } from './live';
import { createPasskey, usePasskey } from './passkeys';
import {
  FinishPasskeyLoginDocument,
  FinishPasskeyRegistrationDocument,
  StartPasskeyLoginDocument,
  StartPasskeyRegistrationDocument,
  VerifySecondFactorDocument,
  LoginDocument,
  LogoutDocument,
  MeDocument,
  RegisterDocument,
  RequestPasswordResetDocument,
  ResetPasswordDocument,
  SessionEventsDocument,
} from './operations';
import { ApiError, type AuthApi, type SessionEvent } from './api';

export function createUrqlApi(): AuthApi {
  const ws = createSessionSocket();
  const client = new Client({
    url: GRAPHQL_URL,
    fetchOptions: { credentials: 'include' },
    preferGetMethod: false,
    requestPolicy: 'network-only',
    exchanges: [
      cacheExchange,
      // Subscriptions go over the WebSocket, before authExchange: their token
      // travels in connection_init (see src/live.ts), not in a header.
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query || '' };
          return {
            subscribe(sink) {
              return { unsubscribe: ws.subscribe(input, sink) };
            },
          };
        },
      }),
      // Silent refresh: authExchange runs refreshAuth once when didAuthError
      // matches, then replays the failed operation with the new token.
      authExchange(async (utils) => ({
        addAuthToOperation(operation) {
          const token = getAccessToken();
          return token ? utils.appendHeaders(operation, { Authorization: `Bearer ${token}` }) : operation;
        },
        didAuthError(error) {
          return error.graphQLErrors.some(isRefreshableError);
        },
        async refreshAuth() {
          await refreshAccessToken();
        },
      })),
      fetchExchange,
    ],
  });

  const check = <T>(result: { data?: T; error?: CombinedError }): T => {
    if (result.error || !result.data) throw ApiError.from(result.error?.graphQLErrors, result.error ?? 'no data');
    return result.data;
  };

  return {
    name: 'urql',
    async register(email, password) {
      const data = check(await client.mutation(RegisterDocument, { input: { email, password } }).toPromise());
      setAccessToken(data.register.accessToken, data.register.expiresIn);
      return data.register.user;
    },
    async login(email, password) {
      const data = check(await client.mutation(LoginDocument, { input: { email, password } }).toPromise());
      setAccessToken(data.login.accessToken, data.login.expiresIn);
      return data.login.user;
    },
    async verifySecondFactor(challenge, code) {
      const data = check(await client.mutation(VerifySecondFactorDocument, { challenge, code }).toPromise());
      setAccessToken(data.verifySecondFactor.accessToken, data.verifySecondFactor.expiresIn);
      return data.verifySecondFactor.user;
    },
    async passkeyLogin(challenge) {
      const start = check(await client.mutation(StartPasskeyLoginDocument, { challenge }).toPromise()).startPasskeyLogin;
      const credential = await usePasskey(start.options);
      const data = check(await client.mutation(FinishPasskeyLoginDocument, { ceremony: start.id, credential }).toPromise());
      setAccessToken(data.finishPasskeyLogin.accessToken, data.finishPasskeyLogin.expiresIn);
      return data.finishPasskeyLogin.user;
    },
    async addPasskey(name) {
      const start = check(await client.mutation(StartPasskeyRegistrationDocument, {}).toPromise()).startPasskeyRegistration;
      const credential = await createPasskey(start.options);
      check(await client.mutation(FinishPasskeyRegistrationDocument, { ceremony: start.id, credential, name }).toPromise());
    },
    async me() {
      return check(await client.query(MeDocument, {}).toPromise()).me;
    },
    async logout() {
      try {
        check(await client.mutation(LogoutDocument, {}).toPromise());
      } finally {
        setAccessToken(null);
      }
    },
    async requestPasswordReset(email) {
      return check(await client.mutation(RequestPasswordResetDocument, { email }).toPromise()).requestPasswordReset;
    },
    async resetPassword(token, newPassword) {
      check(await client.mutation(ResetPasswordDocument, { token, newPassword }).toPromise());
    },
    sessionEvents(observer) {
      return followSession<SessionEvent>(
        ws,
        (sink) => {
          const { unsubscribe } = client.subscription(SessionEventsDocument, {}).subscribe((result) => {
            if (result.error) sink.error(ApiError.from(result.error.graphQLErrors, result.error));
            else if (result.data) sink.next(result.data.sessionEvents);
          });
          return unsubscribe;
        },
        observer,
      );
    },
    forget() {
      setAccessToken(null);
    },
  };
}
