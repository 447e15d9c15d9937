"""Schemathesis checks for authgraph.

GraphQL answers a bad argument or a missing token with an error in a 200
response; those are correct answers, not failures. What must never happen is a
5xx, an answer that is not GraphQL JSON, or an error without a code or with
INTERNAL_SERVER_ERROR (a bug that reached the client).
"""

import json

import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

ALLOWED_CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "BAD_USER_INPUT",
    "RATE_LIMITED",
    "SERVICE_UNAVAILABLE",
}


@schemathesis.check
def no_internal_errors(ctx, response, case):
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:500]}")
    try:
        body = json.loads(response.text)
    except ValueError as e:
        raise AssertionError(f"not JSON ({e}): {response.text[:500]}")
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        if code not in ALLOWED_CODES:
            raise AssertionError(f"error with code {code!r}: {json.dumps(error)[:500]}")


# `JSON` (a passkey ceremony's answer) has no built-in strategy: strings,
# numbers and booleans, which the server must refuse as what they are not
# (PASSKEY_REFUSED), never with an internal error.
schemathesis.graphql.scalar(
    "JSON",
    st.one_of(
        st.text(max_size=64).map(nodes.String),
        st.integers(min_value=-(2**31), max_value=2**31 - 1).map(nodes.Int),
        st.booleans().map(nodes.Boolean),
    ),
)
