/** GraphQL endpoint: same-origin `/graphql` (proxied by Vite) unless VITE_GRAPHQL_URL says otherwise. */
export const GRAPHQL_URL: string = import.meta.env.VITE_GRAPHQL_URL || '/graphql';
