"""The hint shown for a stored credential: which credential it is, never any part of what makes it secret.

Identifiers are not secrets and are what a person needs to recognise a credential: the AWS access key id (its last
4 characters, as the AWS console shows it), a role ARN, an Azure service principal's client and tenant ids, a GCP
service account's e-mail and key id. Secret values (secret access keys, session tokens, client secrets, storage
keys, SAS tokens, private keys, a plain string secret) contribute nothing, not even their length.
"""

from __future__ import annotations

HINT_MAX_LENGTH = 200  # Credential.hint's max_length


def _text(secret: dict, *names: str) -> str:
    for name in names:
        value = secret.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _aws(secret: dict) -> str | None:
    key_id = _text(secret, "access_key_id", "aws_access_key_id")
    role = _text(secret, "role_arn")
    if not key_id and not role:
        return None
    parts = []
    if role:
        parts.append(f"AWS role {role}")
    if key_id:
        temporary = " (temporary)" if _text(secret, "session_token", "aws_session_token") else ""
        parts.append(f"AWS access key …{key_id[-4:]}{temporary}")
    return " via ".join(parts)


def _azure(secret: dict) -> str | None:
    client = _text(secret, "client_id")
    tenant = _text(secret, "tenant_id")
    if client or tenant:
        return f"Azure service principal {client or '?'} (tenant {tenant or '?'})"
    if _text(secret, "storage_account_key"):
        return "Azure storage account key"
    if _text(secret, "storage_sas_token"):
        return "Azure storage SAS token"
    return None


def _gcp(secret: dict) -> str | None:
    email = _text(secret, "client_email")
    if not email:
        return None
    key_id = _text(secret, "private_key_id")
    return f"GCP service account {email}" + (f" (key {key_id[:8]})" if key_id else "")


def credential_hint(secret: dict | str) -> str:
    """A short description of `secret` (a decoded Credential) that names it without revealing any of it."""
    if isinstance(secret, dict):
        for describe in (_aws, _azure, _gcp):
            hint = describe(secret)
            if hint:
                return hint[:HINT_MAX_LENGTH]
        keys = ", ".join(sorted(str(k) for k in secret))
        return f"JSON secret with keys {keys}"[:HINT_MAX_LENGTH] if keys else "empty JSON secret"
    return "string secret (not shown)"
