"""Response headers: a Content-Security-Policy ('self' only, no inline script or style) on admin pages, API
responses and the API docs, plus nosniff, Referrer-Policy, X-Frame-Options DENY and COOP; the schema and the docs
behind login (DEBUG is off in the tests, as in production), the docs page served without any CDN."""

import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tests.factories import CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

EXPECTED_DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def directives(response) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy", "")
    return {
        part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
        for part in (p.strip() for p in header.split(";"))
        if part
    }


def assert_security_headers(response) -> None:
    csp = directives(response)
    for name, value in EXPECTED_DIRECTIVES.items():
        assert csp.get(name) == value, (name, response.headers.get("Content-Security-Policy"))
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.fixture
def signed_in(db):
    # an account admin of the team "Default", where the factories put accounts (the detail page shows its actions)
    user = UserFactory(username="reader")
    team_member_set(team=team_default(), user=user, role=Role.ACCOUNT_ADMIN)
    client = APIClient()
    client.force_login(user)
    return client


def test_admin_pages_carry_the_csp_and_the_security_headers(admin_client, client):
    for response in (
        client.get("/admin/login/"),
        admin_client.get("/admin/"),
        admin_client.get("/admin/providers_app/cloudaccount/"),
        admin_client.get("/admin/providers_app/cloudaccount/add/"),
    ):
        assert response.status_code == 200
        assert_security_headers(response)


def test_api_responses_carry_the_csp_and_the_security_headers(signed_in):
    for response in (
        signed_in.get("/api/v1/accounts/"),
        signed_in.get("/api/v1/accounts/", HTTP_ACCEPT="text/html"),  # the browsable API
        APIClient().get("/api/v1/accounts/"),  # a 401
        APIClient().get("/healthz"),
    ):
        assert response.status_code in (200, 401)
        assert_security_headers(response)


def test_browsable_api_pages_have_no_inline_style(signed_in):
    # DRF inlines its code highlighting styles and two style attributes; our api.html moves them to a static file
    account = CloudAccountFactory()
    for path in ("/api/v1/accounts/", f"/api/v1/accounts/{account.pk}/"):
        page = signed_in.get(path, HTTP_ACCEPT="text/html").content.decode()
        assert "finops/drf_code.css" in page
        assert "<style" not in page and 'style="' not in page, path
    assert "extra-actions-menu" in page  # the detail page has the menu whose style attribute was cut


def test_schema_and_docs_need_a_login(client):
    # given the production defaults: DEBUG off, API_DOCS_PUBLIC off
    assert (settings.DEBUG, settings.API_DOCS_PUBLIC) == (False, False)
    # when nobody is signed in
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/")
    script = client.get("/api/docs/?script=")
    # then the schema is refused and the docs page sends the browser to the admin login, and back
    assert schema.status_code == 401
    assert b"/api/v1/" not in schema.content
    assert (docs.status_code, docs.headers["Location"]) == (302, "/admin/login/?next=/api/docs/")
    assert script.status_code == 302
    assert_security_headers(schema)


def test_schema_and_docs_work_for_a_signed_in_user(signed_in):
    # when
    schema = signed_in.get("/api/schema/")
    docs = signed_in.get("/api/docs/")
    script = signed_in.get("/api/docs/?script=")
    # then
    assert schema.status_code == docs.status_code == script.status_code == 200
    assert b"/api/v1/tasks/runs" in schema.content
    assert_security_headers(docs)
    page = docs.content.decode()
    # Swagger UI from our own static files: no CDN, no inline script or style, the init script a request of its own
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert not re.search(r"https?://", page), "the docs page must load nothing from another origin"
    assert "<style" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline <script> blocks are refused by the CSP"
    assert 'src="/api/docs/?script="' in page
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert script.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert b"SwaggerUIBundle" in script.content


def test_the_static_files_the_docs_page_needs_exist():
    for path in (
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-standalone-preset.js",
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        "finops/api_docs.css",
    ):
        assert finders.find(path), path


def test_with_api_docs_public_the_docs_need_no_login(settings, client):
    settings.API_DOCS_PUBLIC = True
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


# The policy text is built once per setting for the responses that all get the same one (finops/csp_headers.py);
# these show it is the text django-csp builds, and that what makes a response's policy its own still counts.


def run_middleware(response, *, use_nonce: bool = False):
    from django.test import RequestFactory

    from finops.csp_headers import CSPMiddleware

    request = RequestFactory().get("/api/v1/tasks/active")

    def view(req):
        if use_nonce:
            response.nonce_seen = str(req.csp_nonce)
        return response

    return CSPMiddleware(view)(request), request


def test_the_kept_policy_is_the_one_django_csp_builds(settings):
    from csp.utils import build_policy
    from django.http import HttpResponse

    first, _ = run_middleware(HttpResponse())
    assert first.headers["Content-Security-Policy"] == build_policy()
    assert "Content-Security-Policy-Report-Only" not in first.headers
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'self'", "https://cdn.example.com"]}}
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": {"default-src": ["'none'"]}}
    changed, _ = run_middleware(HttpResponse())
    assert changed.headers["Content-Security-Policy"] == "default-src 'self' https://cdn.example.com"
    assert changed.headers["Content-Security-Policy-Report-Only"] == "default-src 'none'"


def test_a_views_own_policy_a_nonce_and_an_exemption_still_count(settings):
    from csp.constants import NONCE
    from csp.decorators import csp_exempt, csp_update
    from django.http import HttpResponse

    updated, _ = run_middleware(csp_update({"img-src": "https://img.example.com"})(lambda r: HttpResponse())(None))
    assert "img-src 'self' data: https://img.example.com" in updated.headers["Content-Security-Policy"]
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"script-src": ["'self'", NONCE]}}
    plain, _ = run_middleware(HttpResponse())
    assert "script-src 'self'" in plain.headers["Content-Security-Policy"]
    assert "nonce" not in plain.headers["Content-Security-Policy"]  # none asked for: none in the header
    with_nonce = HttpResponse()
    answered, _ = run_middleware(with_nonce, use_nonce=True)
    assert f"'nonce-{with_nonce.nonce_seen}'" in answered.headers["Content-Security-Policy"]
    exempt, request = run_middleware(csp_exempt()(lambda r: HttpResponse())(None))
    assert "Content-Security-Policy" not in exempt.headers
    with pytest.raises(Exception, match="not available after the CSP header"):
        str(request.csp_nonce)  # asked for too late: an error, as django-csp does
