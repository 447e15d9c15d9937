import { ApolloClient, ApolloError, ApolloLink, HttpLink, InMemoryCache, Observable, from, fromPromise } from '@apollo/client/core';
import { onError } from '@apollo/client/link/error';
import { GRAPHQL_URL } from './config';
import { getAccessToken, isRefreshableError, refreshAccessToken, setAccessToken } from './auth';
import { LoginDocument, LogoutDocument, MeDocument, RegisterDocument, RequestPasswordResetDocument, ResetPasswordDocument } from './operations';
import { ApiError, type AuthApi } from './api';

// Adds `Authorization: Bearer <token>` from memory to every operation
// (read at send time, so a retry after a refresh carries the new token).
const authLink = new ApolloLink((operation, forward) => {
  const token = getAccessToken();
  if (token) {
    operation.setContext(({ headers = {} }: { headers?: Record<string, string> }) => ({
      headers: { ...headers, authorization: `Bearer ${token}` },
    }));
  }
  return forward(operation);
});

// Silent refresh: on UNAUTHENTICATED / ACCESS_TOKEN_EXPIRED (or MISSING_TOKEN
// after a reload), refresh once through the cookie and retry the operation once.
const refreshLink = onError(({ graphQLErrors, response, operation, forward }) => {
  if (!graphQLErrors?.some(isRefreshableError)) return;
  if (operation.operationName === 'RefreshToken' || operation.getContext().authRetried) return;
  operation.setContext({ authRetried: true });
  return fromPromise(refreshAccessToken()).flatMap((token) =>
    token ? forward(operation) : Observable.of(response ?? { errors: graphQLErrors }),
  );
});

export function createApolloApi(): AuthApi {
  const client = new ApolloClient({
    link: from([refreshLink, authLink, new HttpLink({ uri: GRAPHQL_URL, credentials: 'include' })]),
    cache: new InMemoryCache(),
    defaultOptions: {
      query: { fetchPolicy: 'network-only' },
      watchQuery: { fetchPolicy: 'network-only' },
    },
  });

  const fail = (e: unknown): never => {
    throw e instanceof ApolloError ? ApiError.from(e.graphQLErrors, e) : ApiError.from(undefined, e);
  };

  return {
    name: 'apollo',
    async register(email, password) {
      const { data } = await client.mutate({ mutation: RegisterDocument, variables: { input: { email, password } } }).catch(fail);
      setAccessToken(data!.register.accessToken);
      return data!.register.user;
    },
    async login(email, password) {
      const { data } = await client.mutate({ mutation: LoginDocument, variables: { input: { email, password } } }).catch(fail);
      setAccessToken(data!.login.accessToken);
      return data!.login.user;
    },
    async me() {
      const { data } = await client.query({ query: MeDocument, fetchPolicy: 'network-only' }).catch(fail);
      return data.me;
    },
    async logout() {
      try {
        await client.mutate({ mutation: LogoutDocument }).catch(fail);
      } finally {
        setAccessToken(null);
        await client.clearStore();
      }
    },
    async requestPasswordReset(email) {
      const { data } = await client.mutate({ mutation: RequestPasswordResetDocument, variables: { email } }).catch(fail);
      return data!.requestPasswordReset;
    },
    async resetPassword(token, newPassword) {
      // (Apollo drops a mutation's root fields, keyed by their arguments, from
      // the cache once it completes: the token does not stay there.)
      await client.mutate({ mutation: ResetPasswordDocument, variables: { token, newPassword } }).catch(fail);
    },
  };
}
