"""Writes on cloud accounts and their encrypted credential, for the API (and any other interface)."""

import contextlib
import json

from django.core.exceptions import ValidationError
from django.db import transaction

from finops.egress import EgressRefused

from ..connectors import connection_check
from ..connectors.endpoints import credential_check, endpoint_changes, settings_check
from ..models import CloudAccount, Credential, Team


def account_egress_validate(
    *,
    provider: str,
    settings: dict | None,
    credentials: dict | str | None = None,
    account: CloudAccount | None = None,
    credential_entered: bool | None = None,
) -> None:
    """Save time, for every interface (API serializer, admin form, this module's writes): the account's endpoint
    settings and its credential's URLs under the egress policy, and — on an existing account that has a
    credential — any change of an endpoint, authority or CA bundle only together with the credential entered
    again (whoever may edit settings but does not know the secret cannot send it elsewhere).

    `credential_entered` is for a caller whose secret arrives apart from `credentials` (the admin's inline);
    by default a credential counts as entered when `credentials` is given.

    Raises ValidationError keyed by "settings" or "credentials", naming the setting and why."""
    if credential_entered is None:
        credential_entered = credentials is not None
    if settings is not None:
        try:
            settings_check(provider, settings)
        except EgressRefused as exc:
            raise ValidationError({"settings": str(exc)}) from None
    if credentials is not None:
        if isinstance(credentials, str):
            # A string holding JSON is stored as text but read back as the object (Credential.get_secret).
            with contextlib.suppress(ValueError):
                credentials = json.loads(credentials)
        try:
            credential_check(provider, credentials)
        except EgressRefused as exc:
            raise ValidationError({"credentials": str(exc)}) from None
    if account is None or account.pk is None or settings is None or credential_entered:
        return
    stored = CloudAccount.objects.filter(pk=account.pk).values_list("settings", flat=True).first()
    changed = endpoint_changes(provider, stored or {}, settings)
    if changed and Credential.objects.filter(account_id=account.pk).exists():
        raise ValidationError(
            {"settings": [f"changing {name} requires the credential to be entered again" for name in changed]}
        )


def _credential_store(*, account: CloudAccount, secret: dict | str, kind: str | None) -> Credential:
    credential = Credential.objects.filter(account=account).first() or Credential(account=account)
    credential.set_secret(secret)
    if kind is not None:
        credential.kind = kind
    credential.save()
    account.credential = credential  # the caller's (possibly prefetched) account sees the new hint
    return credential


@transaction.atomic
def account_create(
    *,
    provider: str,
    name: str,
    external_id: str = "",
    is_active: bool = True,
    settings: dict | None = None,
    credentials: dict | str | None = None,
    credential_kind: str | None = None,
    team: Team | None = None,
) -> CloudAccount:
    """`team`: the owning team; the API and the admin require one, other callers get the team "Default"."""
    account_egress_validate(provider=provider, settings=settings or {}, credentials=credentials)
    if team is None:
        from .teams import team_default

        team = team_default()
    account = CloudAccount.objects.create(
        team=team, provider=provider, name=name, external_id=external_id, is_active=is_active, settings=settings or {}
    )
    if credentials is not None:
        _credential_store(account=account, secret=credentials, kind=credential_kind)
    return account


# Fields an update may change; the provider is fixed once data has been loaded under it.
UPDATABLE = ("team", "name", "external_id", "is_active", "settings")


@transaction.atomic
def account_update(
    *,
    account: CloudAccount,
    credentials: dict | str | None = None,
    credential_kind: str | None = None,
    **changes,
) -> CloudAccount:
    account_egress_validate(
        provider=account.provider, settings=changes.get("settings"), credentials=credentials, account=account
    )
    fields = [name for name in UPDATABLE if name in changes]
    for name in fields:
        setattr(account, name, changes[name])
    if fields:
        account.save(update_fields=[*fields, "updated_at"])
    if credentials is not None:
        _credential_store(account=account, secret=credentials, kind=credential_kind)
    elif credential_kind is not None and hasattr(account, "credential"):
        account.credential.kind = credential_kind
        account.credential.save(update_fields=["kind", "updated_at"])
    return account


def account_connection_check(*, account_id: int) -> dict:
    """Try the account's credentials and export/inventory access as sync and discovery will; say what is wrong."""
    account = CloudAccount.objects.select_related("credential").filter(id=account_id).first()
    if account is None:
        from finops.errors import PermanentError

        raise PermanentError(f"cloud account {account_id} does not exist")
    return connection_check(account).as_dict()
