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

// Over a WebSocket (graphql-transport-ws, see src/live.ts), not HTTP: the
// socket opens with the access token in connection_init. SESSION_ENDED is the
// last event (the server then closes the socket with 4403); ROLE_CHANGED
// carries the new role.
export const SessionEventsDocument = graphql(`
  subscription SessionEvents {
    sessionEvents { type role occurredAt }
  }
`);
