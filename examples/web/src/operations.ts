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
