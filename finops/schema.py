"""OpenAPI schema post-processing: the error answers every API operation can give, documented once.

Views document their own success and domain answers (202, 409, ...). The answers that come from the framework
and the limits rather than from a view — 400 for a bad parameter or body, 401 without credentials, 403 without
the permission, 404 for an unknown id, 413 for an oversize body, 429 when throttled — are added here where a
view has not described them, so the schema states every status code a client can actually get (checked by
tests/security/test_schema_fuzz.py).
"""

ERROR_SCHEMA = {
    "type": "object",
    "description": "`detail` says what is wrong; a validation error names each field instead.",
    "additionalProperties": True,
}
ERRORS = {
    "400": "Invalid input: the fields or parameters at fault are named.",
    "401": "No or invalid credentials (JWT or session).",
    "403": "Signed in, but lacking the permission this operation needs.",
    "404": "No such object.",
    "413": "The request body is larger than API_MAX_BODY_BYTES.",
    "429": "Too many requests (THROTTLE_* settings); Retry-After says when to try again.",
}
THROTTLED_PATHS = ("/api/v1/auth/token", "/api/v1/tasks/sync/", "/api/v1/tasks/monitor/", "/api/v1/tasks/analyze/")
THROTTLED_SUFFIXES = ("/replay", "/test-connection/", "/tasks/maintenance/cleanup")
BODY_METHODS = {"post", "put", "patch"}


def add_error_responses(result, generator, request, public):
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            # Unauthenticated operations (the liveness probe) list an empty security requirement.
            anonymous = {} in operation.get("security", [])
            wanted = ["400"]
            if not anonymous:
                wanted.append("401")  # for the sign-in itself: a wrong password
                if not path.startswith("/api/v1/auth/"):
                    wanted.append("403")
            if "{" in path:
                wanted.append("404")
            if method in BODY_METHODS:
                wanted.append("413")
            if path.startswith(THROTTLED_PATHS) or path.endswith(THROTTLED_SUFFIXES):
                wanted.append("429")
            for code in wanted:
                responses.setdefault(
                    code,
                    {
                        "description": ERRORS[code],
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    },
                )
    return result
