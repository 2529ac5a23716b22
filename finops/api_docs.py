"""The OpenAPI schema and the Swagger UI page, behind login unless settings.API_DOCS_PUBLIC.

The schema lists every route, parameter and permission: on a production site only signed-in users (session or
JWT) get it (401 otherwise); the docs page sends a signed-out browser to the admin login and back. The page works
under the CSP (script-src/style-src 'self'): Swagger UI's files come from drf-spectacular-sidecar's static files,
its init script is a request of its own, the page's inline style a static file.
"""

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.urls import reverse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import exceptions
from rest_framework.permissions import AllowAny, IsAuthenticated


class _LoginUnlessPublic:
    """Read API_DOCS_PUBLIC per request (not once at import, as SPECTACULAR_SETTINGS' SERVE_PERMISSIONS is)."""

    def get_permissions(self):
        return [AllowAny()] if settings.API_DOCS_PUBLIC else [IsAuthenticated()]

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Neither the schema nor the page's script (which embeds the CSRF token) may be loaded by another site.
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        return response


class SchemaView(_LoginUnlessPublic, SpectacularAPIView):
    pass


class SwaggerDocsView(_LoginUnlessPublic, SpectacularSwaggerSplitView):
    template_name = "drf_spectacular/swagger_ui_csp.html"

    def handle_exception(self, exc):
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            return redirect_to_login(self.request.get_full_path(), reverse("admin:login"))
        return super().handle_exception(exc)
