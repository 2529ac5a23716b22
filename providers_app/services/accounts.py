"""Writes on cloud accounts and their encrypted credential, for the API (and any other interface)."""

from django.db import transaction

from ..connectors import connection_check
from ..models import CloudAccount, Credential, Team


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
