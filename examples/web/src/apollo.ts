import { ApolloClient, ApolloError, ApolloLink, HttpLink, InMemoryCache, Observable, from, fromPromise, split, type Operation } from '@apollo/client/core';
import { onError } from '@apollo/client/link/error';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
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

const isSubscription = ({ query }: Operation): boolean => {
  const definition = getMainDefinition(query);
  return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
};

export function createApolloApi(): AuthApi {
  // Subscriptions go over the WebSocket (the token travels in connection_init,
  // see src/live.ts); queries and mutations over HTTP with the links above.
  const ws = createSessionSocket();
  const client = new ApolloClient({
    link: split(
      isSubscription,
      new GraphQLWsLink(ws),
      from([refreshLink, authLink, new HttpLink({ uri: GRAPHQL_URL, credentials: 'include' })]),
    ),
    cache: new InMemoryCache(),
    defaultOptions: {
      query: { fetchPolicy: 'network-only' },
      watchQuery: { fetchPolicy: 'network-only' },
    },
  });

  const apiError = (e: unknown): ApiError =>
    e instanceof ApiError ? e : e instanceof ApolloError ? ApiError.from(e.graphQLErrors, e) : ApiError.from(undefined, e);
  const fail = (e: unknown): never => {
    throw apiError(e);
  };

  return {
    name: 'apollo',
    async register(email, password) {
      const { data } = await client.mutate({ mutation: RegisterDocument, variables: { input: { email, password } } }).catch(fail);
      setAccessToken(data!.register.accessToken, data!.register.expiresIn);
      return data!.register.user;
    },
    async login(email, password) {
      const { data } = await client.mutate({ mutation: LoginDocument, variables: { input: { email, password } } }).catch(fail);
      setAccessToken(data!.login.accessToken, data!.login.expiresIn);
      return data!.login.user;
    },
    async verifySecondFactor(challenge, code) {
      const { data } = await client.mutate({ mutation: VerifySecondFactorDocument, variables: { challenge, code } }).catch(fail);
      setAccessToken(data!.verifySecondFactor.accessToken, data!.verifySecondFactor.expiresIn);
      return data!.verifySecondFactor.user;
    },
    async passkeyLogin(challenge) {
      const { data: start } = await client.mutate({ mutation: StartPasskeyLoginDocument, variables: { challenge } }).catch(fail);
      const credential = await usePasskey(start!.startPasskeyLogin.options).catch(fail);
      const { data } = await client
        .mutate({ mutation: FinishPasskeyLoginDocument, variables: { ceremony: start!.startPasskeyLogin.id, credential } })
        .catch(fail);
      setAccessToken(data!.finishPasskeyLogin.accessToken, data!.finishPasskeyLogin.expiresIn);
      return data!.finishPasskeyLogin.user;
    },
    async addPasskey(name) {
      const { data: start } = await client.mutate({ mutation: StartPasskeyRegistrationDocument }).catch(fail);
      const credential = await createPasskey(start!.startPasskeyRegistration.options).catch(fail);
      await client
        .mutate({ mutation: FinishPasskeyRegistrationDocument, variables: { ceremony: start!.startPasskeyRegistration.id, credential, name } })
        .catch(fail);
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
    sessionEvents(observer) {
      return followSession<SessionEvent>(
        ws,
        (sink) => {
          const subscription = client.subscribe({ query: SessionEventsDocument, fetchPolicy: 'no-cache' }).subscribe({
            next: ({ data, errors }) => (data ? sink.next(data.sessionEvents) : sink.error(ApiError.from(errors, 'no data'))),
            error: (e) => sink.error(apiError(e)),
          });
          return () => subscription.unsubscribe();
        },
        observer,
      );
    },
    forget() {
      setAccessToken(null);
      void client.clearStore();
    },
  };
}
