import { graphql } from './gql';

export const RegisterDocument = graphql(`
  mutation Register($input: RegisterInput!) {
    register(input: $input) {
      accessToken
      expiresIn
      user { id email role }
    }
  }
`);

export const LoginDocument = graphql(`
  mutation Login($input: LoginInput!) {
    login(input: $input) {
      accessToken
      expiresIn
      user { id email role }
    }
  }
`);

export const MeDocument = graphql(`
  query Me {
    me { id email role }
  }
`);

// No argument: the refresh token travels in the HttpOnly cookie.
export const RefreshTokenDocument = graphql(`
  mutation RefreshToken {
    refreshToken { accessToken expiresIn }
  }
`);

export const LogoutDocument = graphql(`
  mutation Logout {
    logout
  }
`);

// Answers true for every well-formed address, registered or not: the UI says
// the same thing whatever the address.
export const RequestPasswordResetDocument = graphql(`
  mutation RequestPasswordReset($email: String!) {
    requestPasswordReset(email: $email)
  }
`);

// The token of the mailed link travels only in this mutation's variables.
// Logs nobody in: the user logs in with the new password afterwards.
export const ResetPasswordDocument = graphql(`
  mutation ResetPassword($token: String!, $newPassword: String!) {
    resetPassword(token: $token, newPassword: $newPassword)
  }
`);

// A login answered SECOND_FACTOR_REQUIRED gave `extensions.challenge`; it and
// a code from the authenticator app (or a recovery code) give the session.
export const VerifySecondFactorDocument = graphql(`
  mutation VerifySecondFactor($challenge: String!, $code: String!) {
    verifySecondFactor(challenge: $challenge, code: $code) {
      accessToken
      expiresIn
      user { id email role }
    }
  }
`);

// Passkeys: each ceremony is a start (options for the browser) and a finish
// (the browser's answer, as credential.toJSON()). Without a challenge, a
// sign-in with any passkey the browser holds for this site; with one, the
// second factor of that login.
export const StartPasskeyLoginDocument = graphql(`
  mutation StartPasskeyLogin($challenge: String) {
    startPasskeyLogin(challenge: $challenge) { id options }
  }
`);

export const FinishPasskeyLoginDocument = graphql(`
  mutation FinishPasskeyLogin($ceremony: ID!, $credential: JSON!) {
    finishPasskeyLogin(ceremony: $ceremony, credential: $credential) {
      accessToken
      expiresIn
      user { id email role }
    }
  }
`);

export const StartPasskeyRegistrationDocument = graphql(`
  mutation StartPasskeyRegistration {
    startPasskeyRegistration { id options }
  }
`);

export const FinishPasskeyRegistrationDocument = graphql(`
  mutation FinishPasskeyRegistration($ceremony: ID!, $credential: JSON!, $name: String) {
    finishPasskeyRegistration(ceremony: $ceremony, credential: $credential, name: $name) { id name }
  }
`);

// Over a WebSocket (graphql-transport-ws, see src/live.ts), not HTTP: the
// socket opens with the access token in connection_init. SESSION_ENDED is the
// last event (the server then closes the socket with 4403); ROLE_CHANGED
// carries the new role.
export const SessionEventsDocument = graphql(`
  subscription SessionEvents {
    sessionEvents { kind sessionId role occurredAt }
  }
`);
