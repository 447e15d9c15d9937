"""Verifies an authgraph access token as a Python service would: PyJWT's
PyJWKClient fetches the JWK Set and picks the key by the token's kid.

Usage: verify_pyjwt.py JWKS_URL TOKEN ISSUER AUDIENCE
Prints the token's subject and exits 0, or exits 1 when the token is refused.
"""

import sys

import jwt


def main() -> int:
    jwks_url, token, issuer, audience = sys.argv[1:5]
    client = jwt.PyJWKClient(jwks_url)
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key, algorithms=["ES256", "EdDSA"], issuer=issuer, audience=audience)
    except jwt.PyJWTError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(claims["sub"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
