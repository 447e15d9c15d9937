import { Client, cacheExchange, fetchExchange, type CombinedError } from '@urql/core';
import { authExchange } from '@urql/exchange-auth';
import { GRAPHQL_URL } from './config';
import { getAccessToken, isRefreshableError, refreshAccessToken, setAccessToken } from './auth';
import { LoginDocument, LogoutDocument, MeDocument, RegisterDocument, RequestPasswordResetDocument, ResetPasswordDocument } from './operations';
import { ApiError, type AuthApi } from './api';

export function createUrqlApi(): AuthApi {
  const client = new Client({
    url: GRAPHQL_URL,
    fetchOptions: { credentials: 'include' },
    preferGetMethod: false,
    requestPolicy: 'network-only',
    exchanges: [
      cacheExchange,
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
      setAccessToken(data.register.accessToken);
      return data.register.user;
    },
    async login(email, password) {
      const data = check(await client.mutation(LoginDocument, { input: { email, password } }).toPromise());
      setAccessToken(data.login.accessToken);
      return data.login.user;
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
  };
}
