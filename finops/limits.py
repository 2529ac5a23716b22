"""Bounds on what one API request may cost the server: body size, JSON depth, page size, request rates.

Everything here is read from settings at request time (not at import), so the operator's environment and a
test's `settings` fixture both apply, and every limit answers with a clear 4xx instead of a 500 or a stall.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.throttling import BaseThrottle

# --- request bodies ------------------------------------------------------------------------------------------


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


def body_limit() -> int:
    return settings.API_MAX_BODY_BYTES


def too_large_message(size: int | None) -> str:
    given = f" ({size} bytes)" if size is not None else ""
    return f"The request body{given} is larger than the API accepts ({body_limit()} bytes, API_MAX_BODY_BYTES)."


class RequestBodyLimitMiddleware:
    """Refuse an API request whose declared body is over the limit with 413, before anything reads it.

    First in the chain: no session, authentication, throttle or parser work is done for it, and the body is
    never read (Django's WSGI request reads at most CONTENT_LENGTH bytes, so a body without one is empty).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                size = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "The Content-Length header is not a number."}, status=400)
            if size > body_limit():
                # The unread body is never taken for a next request: Django's WSGI handler reads at most
                # CONTENT_LENGTH, and both runserver and gunicorn close a connection whose body was left unread.
                return JsonResponse({"detail": too_large_message(size)}, status=413)
        return self.get_response(request)


def json_depth_exceeds(value, limit: int) -> bool:
    """True when `value` nests lists/objects deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with a size bound read before parsing and a nesting bound after it.

    The middleware refuses a declared oversize body; this catches a body that arrives without a usable
    Content-Length (ASGI, chunked through a proxy) by reading at most limit + 1 bytes. A body nested deeper
    than the C decoder's recursion allows is a 400, as is one nested deeper than API_MAX_JSON_DEPTH.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        limit = body_limit()
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(too_large_message(None))
        try:
            text = codecs.decode(raw, encoding)
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {settings.API_MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_depth_exceeds(data, settings.API_MAX_JSON_DEPTH):
            raise ParseError(f"JSON parse error - nested deeper than {settings.API_MAX_JSON_DEPTH} levels")
        return data


def _refuse_constant(name: str):
    # NaN / Infinity are not JSON, and PostgreSQL's jsonb refuses them later with a 500 (DRF's own strict mode).
    raise ValueError(f"{name} is not valid JSON")


# --- pagination ----------------------------------------------------------------------------------------------


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`limit` is capped at API_PAGE_MAX_LIMIT; an `offset` beyond API_PAGE_MAX_OFFSET is a 400 naming it.

    Deep offsets make PostgreSQL read and drop every row before them, and one past bigint is a 500.
    """

    @property
    def max_limit(self) -> int:
        return settings.API_PAGE_MAX_LIMIT

    def get_offset(self, request) -> int:
        offset = super().get_offset(request)
        if offset > settings.API_PAGE_MAX_OFFSET:
            raise ValidationError({self.offset_query_param: [f"At most {settings.API_PAGE_MAX_OFFSET}."]})
        return offset

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": settings.API_PAGE_MAX_LIMIT},
            self.offset_query_param: {"minimum": 0, "maximum": settings.API_PAGE_MAX_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


# --- rates ---------------------------------------------------------------------------------------------------

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """ "5/min" -> (5, 60); None or "" -> no limit. The period is s, m, h or d (any word starting so)."""
    if not rate:
        return None
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[0].lower()]


class FixedWindowThrottle(BaseThrottle):
    """At most N requests per window per identity, counted in the Redis cache so every web process shares it.

    One INCR per request (atomic, unlike DRF's read-modify-write history list): 40 concurrent requests count
    as 40. A fixed window lets at most 2N through around a window boundary, which is fine for these limits.
    `rate_setting` names the setting holding the rate ("5/min"); empty disables the throttle.
    """

    scope = ""
    rate_setting = ""

    def get_ident_key(self, request, view) -> str | None:
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        rate = parse_rate(getattr(settings, self.rate_setting, None))
        if rate is None:
            return True
        ident = self.get_ident_key(request, view)
        if ident is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{ident}:{period}:{window}"
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=period + 1)
            count = 1
        self._wait = (window + 1) * period - now
        return count <= limit

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginIPThrottle(FixedWindowThrottle):
    """Sign-in attempts per client address (REMOTE_ADDR, or X-Forwarded-For behind NUM_PROXIES proxies)."""

    scope = "login_ip"
    rate_setting = "THROTTLE_LOGIN_IP_RATE"

    def get_ident_key(self, request, view) -> str | None:
        return _digest(self.get_ident(request))


class LoginUserThrottle(FixedWindowThrottle):
    """Sign-in attempts per username given in the body, from any address (a distributed guess of one password).

    The body is parsed here (already bounded by RequestBodyLimitMiddleware and BoundedJSONParser; its errors are
    the answer); a request without a usable username is left to the per-address throttle and the view's 400.
    """

    scope = "login_user"
    rate_setting = "THROTTLE_LOGIN_USER_RATE"

    def get_ident_key(self, request, view) -> str | None:
        data = request.data  # a malformed, oversize or too deep body raises its own 400/413 here
        username = data.get("username") if hasattr(data, "get") else None
        if not isinstance(username, str) or not username.strip():
            return None
        return _digest(username.strip().casefold())


class TriggerUserThrottle(FixedWindowThrottle):
    """Task triggers (enqueue, replay, connection tests) per signed-in user."""

    scope = "trigger"
    rate_setting = "THROTTLE_TRIGGER_RATE"

    def get_ident_key(self, request, view) -> str | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return _digest(self.get_ident(request))
        return f"user-{user.pk}"


class RefreshIPThrottle(LoginIPThrottle):
    """Token refreshes per client address (a refresh token is a signed secret: nothing to guess per user)."""

    scope = "refresh_ip"
    rate_setting = "THROTTLE_REFRESH_IP_RATE"


# --- the admin's sign-in form ----------------------------------------------------------------------------------


class AdminLoginUserThrottle(LoginUserThrottle):
    """The same per-username budget as the token endpoint, read from the admin's form (a plain Django request)."""

    def get_ident_key(self, request, view) -> str | None:
        username = request.POST.get("username")
        if not isinstance(username, str) or not username.strip():
            return None
        return _digest(username.strip().casefold())


def throttled_login(login_view):
    """Wrap the admin's login view: sign-in attempts (POSTs) share the token endpoint's per-address and
    per-username limits, so the admin form is not a way around them. A refused attempt is a 429 naming the wait,
    and the password is not checked at all."""

    def view(request, *args, **kwargs):
        if request.method == "POST":
            for throttle in (LoginIPThrottle(), AdminLoginUserThrottle()):
                if not throttle.allow_request(request, None):
                    wait = max(1, int(throttle.wait() or 1))
                    response = HttpResponse(
                        f"Too many sign-in attempts. Try again in {wait} seconds.",
                        status=429,
                        content_type="text/plain; charset=utf-8",
                    )
                    response["Retry-After"] = str(wait)
                    return response
        return login_view(request, *args, **kwargs)

    return view
