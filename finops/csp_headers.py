"""django-csp's middleware, with the policy text built once for the responses that all get the same one."""

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as BaseCSPMiddleware
from csp.utils import build_policy
from django.conf import settings

# What django-csp's view decorators (@csp_update, @csp_replace, @csp, their report-only forms) hang on a response.
PER_RESPONSE_POLICY = (
    "_csp_config",
    "_csp_update",
    "_csp_replace",
    "_csp_config_ro",
    "_csp_update_ro",
    "_csp_replace_ro",
)


class CSPMiddleware(BaseCSPMiddleware):
    """django-csp builds the policy text from the settings for every response (a dataclass turned into a dict, then
    a string; twice, enforced and report-only): about a sixth of the CPU of a cached API answer such as
    `GET /tasks/active`. When the request used no nonce and the response carries no per-view policy, that text
    depends on the two settings only: it is built once per value of them (keyed by their repr, so a changed setting
    is a new key) and set under django-csp's own conditions (not already set, not exempted, not an excluded
    prefix). Any other response goes through django-csp unchanged."""

    def __init__(self, get_response):
        super().__init__(get_response)
        self.built: dict[str, str] = {}

    def policy_text(self, policy: dict | None, report_only: bool) -> str:
        key = f"{report_only}:{policy!r}"
        text = self.built.get(key)
        if text is None:
            text = self.built[key] = build_policy(report_only=report_only)
        return text

    def process_response(self, request, response):
        if (
            getattr(request, "_csp_nonce", None) is not None
            or any(hasattr(response, name) for name in PER_RESPONSE_POLICY)
            or (settings.DEBUG and response.status_code in (404, 500))
        ):
            return super().process_response(request, response)
        for header, setting, report_only, exempt in (
            (HEADER, "CONTENT_SECURITY_POLICY", False, "_csp_exempt"),
            (HEADER_REPORT_ONLY, "CONTENT_SECURITY_POLICY_REPORT_ONLY", True, "_csp_exempt_ro"),
        ):
            policy = getattr(settings, setting, None)
            text = self.policy_text(policy, report_only)
            if not text or header in response or getattr(response, exempt, False):
                continue
            prefixes = (policy or {}).get("EXCLUDE_URL_PREFIXES", None) or ()
            if not request.path_info.startswith(tuple(prefixes)):
                response[header] = text
        # As django-csp: a nonce asked for after the header was written is an error, not a silently missing nonce.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response
