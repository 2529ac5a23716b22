"""Correlation ids: taken from X-Correlation-ID (or made), echoed back, present in JSON log lines."""

import json
import logging

from django.http import HttpResponse
from django.test import RequestFactory

from finops import correlation
from finops.logging import ContextFilter, JsonFormatter


def _seen_by_view():
    seen = {}

    def view(request):
        seen["id"] = correlation.get()
        return HttpResponse("ok")

    return view, seen


def test_middleware_uses_the_client_header_and_echoes_it():
    view, seen = _seen_by_view()
    response = correlation.CorrelationIdMiddleware(view)(RequestFactory().get("/", HTTP_X_CORRELATION_ID="req-42"))
    assert seen["id"] == "req-42"
    assert response["X-Correlation-ID"] == "req-42"
    assert correlation.get() is None  # reset after the request


def test_middleware_replaces_an_unsafe_header_with_a_new_id():
    view, seen = _seen_by_view()
    response = correlation.CorrelationIdMiddleware(view)(
        RequestFactory().get("/", HTTP_X_CORRELATION_ID="bad id\nwith newline")
    )
    assert seen["id"] != "bad id\nwith newline"
    assert len(seen["id"]) == 32
    assert response["X-Correlation-ID"] == seen["id"]


def test_json_log_line_carries_the_correlation_id():
    record = logging.LogRecord("finops.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token = correlation.correlation_id.set("corr-7")
    try:
        ContextFilter().filter(record)
    finally:
        correlation.correlation_id.reset(token)
    line = json.loads(JsonFormatter("%(levelname)s %(name)s %(message)s").format(record))
    assert line["message"] == "hello world"
    assert line["correlation_id"] == "corr-7"
