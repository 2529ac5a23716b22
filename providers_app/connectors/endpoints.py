"""Where an account's settings and credential point the cloud SDKs: the URLs the egress policy checks.

One table for save time (services, API, admin: `settings_check`, `credential_check`, `endpoint_changes`) and
call time (the connectors: `settings_check`, then `endpoint_now` right before each SDK client is built). No SDK
is imported here, so the web app can validate without loading them.
"""

from __future__ import annotations

from finops import egress
from finops.egress import EgressRefused, Kind

# Per provider, every setting that decides where a credential (or a token made from it) is sent, or which TLS
# certificates are trusted on the way. Changing one of them needs the credential entered again.
ENDPOINT_SETTINGS: dict[str, tuple[str, ...]] = {
    "aws": ("endpoint_url", "endpoint_urls"),
    "azure": ("authority_host", "arm_endpoint", "storage_account_url", "ca_bundle"),
    "gcp": ("endpoints",),
}
AZURE_DEFAULTS = {"authority_host": "login.microsoftonline.com", "arm_endpoint": "https://management.azure.com"}
GCP_UNIVERSE = "googleapis.com"


def settings_endpoints(provider: str, settings: dict) -> list[tuple[str, str, Kind]]:
    """(field, URL, kind) of every URL the account's settings set; EgressRefused when a URL setting has the
    wrong shape (e.g. endpoint_urls that is not an object)."""
    settings = settings if isinstance(settings, dict) else {}
    out: list[tuple[str, str, Kind]] = []
    if provider == "aws":
        if settings.get("endpoint_url"):
            out.append(("settings.endpoint_url", settings["endpoint_url"], Kind.AWS))
        per_service = settings.get("endpoint_urls") or {}
        if not isinstance(per_service, dict):
            raise EgressRefused("settings.endpoint_urls", "must be an object {service: URL}")
        out += [(f"settings.endpoint_urls.{name}", url, Kind.AWS) for name, url in per_service.items() if url]
    elif provider == "azure":
        if settings.get("authority_host"):
            out.append(
                ("settings.authority_host", egress.authority_url(settings["authority_host"]), Kind.AZURE_AUTHORITY)
            )
        if settings.get("arm_endpoint"):
            out.append(("settings.arm_endpoint", settings["arm_endpoint"], Kind.AZURE_ARM))
        if settings.get("storage_account_url"):
            out.append(("settings.storage_account_url", settings["storage_account_url"], Kind.AZURE_STORAGE))
    elif provider == "gcp":
        endpoints = settings.get("endpoints") or {}
        if not isinstance(endpoints, dict):
            raise EgressRefused("settings.endpoints", "must be an object {service: URL}")
        out += [(f"settings.endpoints.{name}", url, Kind.GCP) for name, url in endpoints.items() if url]
    return out


def settings_check(provider: str, settings: dict) -> None:
    """Every URL of the account's settings under the static policy; raises EgressRefused naming the setting."""
    for name, url, kind in settings_endpoints(provider, settings):
        egress.url_check(url, kind=kind, field=name)
    if provider == "azure" and isinstance(settings, dict) and settings.get("ca_bundle"):
        _ca_bundle_check(settings)


def _ca_bundle_check(settings: dict) -> None:
    """A CA bundle decides whom the SDK trusts to be Entra ID; with a public authority an attacker's CA would make
    their own server look like it. So only for endpoints the operator allowed (a TLS-inspecting proxy's CA belongs
    in the environment, REQUESTS_CA_BUNDLE, not in an account)."""
    if not isinstance(settings["ca_bundle"], str):
        raise EgressRefused("settings.ca_bundle", "must be a file path")
    authority = settings.get("authority_host") or AZURE_DEFAULTS["authority_host"]
    urls = {
        "settings.authority_host": egress.authority_url(authority),
        "settings.arm_endpoint": settings.get("arm_endpoint") or AZURE_DEFAULTS["arm_endpoint"],
    }
    if settings.get("storage_account_url"):
        urls["settings.storage_account_url"] = settings["storage_account_url"]
    for name, url in urls.items():
        kind = {
            "settings.authority_host": Kind.AZURE_AUTHORITY,
            "settings.arm_endpoint": Kind.AZURE_ARM,
            "settings.storage_account_url": Kind.AZURE_STORAGE,
        }[name]
        if not egress.url_check(url, kind=kind, field=name).operator_allowed:
            raise EgressRefused(
                "settings.ca_bundle",
                f"a custom CA bundle is only accepted when every endpoint is in the operator's EGRESS_ALLOWED_HOSTS "
                f"({name} is not); a TLS-inspecting proxy's CA belongs in the environment (REQUESTS_CA_BUNDLE)",
            )


def credential_check(provider: str, secret: dict | str | None) -> None:
    """The URLs a credential itself holds: a GCP key's token_uri (where the signed JWT goes) and universe_domain
    (which becomes every Google API host when no endpoint is set)."""
    if provider != "gcp" or not isinstance(secret, dict):
        return
    if secret.get("token_uri"):
        egress.url_check(secret["token_uri"], kind=Kind.GCP, field="credentials.token_uri")
    universe = secret.get("universe_domain")
    if universe not in (None, "", GCP_UNIVERSE):
        raise EgressRefused("credentials.universe_domain", f"must be {GCP_UNIVERSE} (Google's public APIs)")


def endpoint_changes(provider: str, old: dict, new: dict) -> list[str]:
    """The endpoint settings whose value differs between two versions of an account's settings."""
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    return [f"settings.{key}" for key in ENDPOINT_SETTINGS.get(provider, ()) if old.get(key) != new.get(key)]


def endpoint_now(url: str | None, *, kind: Kind, field: str) -> str | None:
    """Call time, right before an SDK client is built with `url`: the whole policy including DNS; the URL back
    (None stays None: the SDK's own default endpoint, which is the provider's)."""
    if not url:
        return url
    egress.url_resolve(url, kind=kind, field=field)
    return url
