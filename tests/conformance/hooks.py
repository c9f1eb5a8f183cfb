"""Schemathesis hooks for the conformance run (loaded through SCHEMATHESIS_HOOKS).

Generated cases reuse header values, so two different bodies would often arrive with one
`Idempotency-Key`; the service then answers 422 as the IETF draft requires, which
schemathesis would count as a schema-valid request rejected. A valid key is therefore made
unique per request (still valid); an invalid one is left for the negative checks.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255 and VALID_KEY.match(key):
        headers["Idempotency-Key"] = f"conformance-{uuid.uuid4()}"
