"""The clouds: teams that own accounts, accounts, their encrypted credentials, and the resource inventory."""

import json

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from finops import crypto

from .credential_hints import HINT_MAX_LENGTH, credential_hint


class Provider(models.TextChoices):
    AWS = "aws", "AWS"
    AZURE = "azure", "Azure"
    GCP = "gcp", "GCP"
    FOCUS = "focus", "FOCUS files"


class Role(models.TextChoices):
    """A member's role in a team, from the least to the most: each role can do what the ones before it can."""

    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ACCOUNT_ADMIN = "account_admin", "Account admin"

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self.value)

    def at_least(self) -> list[str]:
        """This role and the ones above it (the memberships that grant it)."""
        return ROLE_ORDER[self.rank :]


ROLE_ORDER = [Role.VIEWER.value, Role.OPERATOR.value, Role.ACCOUNT_ADMIN.value]


class Team(models.Model):
    """Owns cloud accounts; everything derived from an account is seen through its team's memberships."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("platform_admin", "Platform administrator: every team's data and the organisation's settings")]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in a team. Written through providers_app.services.teams, which keeps the role groups in line."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        ordering = ["team", "user"]
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_team_user_uniq")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.get_role_display()})"


class CloudAccount(models.Model):
    # Required in the admin and the API (blank=False); commands without a team use the team "Default"
    # (services.teams.team_default). A NULL left in the column makes the account organisation-wide: only
    # platform admins see it.
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="accounts", null=True)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    name = models.CharField(max_length=200, unique=True)
    external_id = models.CharField(
        max_length=200, blank=True, help_text="The provider's id: AWS account, Azure subscription, GCP billing account."
    )
    is_active = models.BooleanField(default=True)
    # Connector settings, e.g. {"path": "/data/exports"} for focus, {"bucket": ..., "prefix": ...} for AWS.
    settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"

    def clean(self) -> None:
        if self.provider == Provider.FOCUS:
            from .connectors.focus import focus_settings_problem

            problem = focus_settings_problem(self.settings)
            if problem:
                raise ValidationError({"settings": problem})


class Credential(models.Model):
    """A secret (JSON document) for one account, Fernet-encrypted; only a hint naming it is ever shown."""

    account = models.OneToOneField(CloudAccount, on_delete=models.CASCADE, related_name="credential")
    kind = models.CharField(max_length=50, blank=True, help_text="e.g. access_key, assume_role, service_principal")
    ciphertext = crypto.EncryptedTextField(editable=False)
    # Which credential this is (kind, AWS access key id's last 4, client id, service account), never any of the
    # secret: see credential_hints.py.
    hint = models.CharField(max_length=HINT_MAX_LENGTH, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"credential for {self.account.name} {self.hint}"

    def __repr__(self) -> str:  # never leak the ciphertext in tracebacks either
        return f"<Credential account={self.account_id} hint={self.hint!r}>"

    def set_secret(self, secret: dict | str) -> None:
        text = secret if isinstance(secret, str) else json.dumps(secret, sort_keys=True)
        self.ciphertext = crypto.encrypt(text)
        self.hint = credential_hint(secret if isinstance(secret, dict) else _decoded(text))

    def get_secret(self) -> dict | str:
        return _decoded(crypto.decrypt(self.ciphertext))


def _decoded(text: str) -> dict | str:
    """A secret as stored: a JSON object (most credentials) or a plain string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


class Resource(models.Model):
    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="resources")
    resource_id = models.CharField(max_length=1024)
    resource_type = models.CharField(max_length=200, blank=True)
    service_name = models.CharField(max_length=200, blank=True)
    region = models.CharField(max_length=100, blank=True)
    name = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=50, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    is_terminated = models.BooleanField(default=False)
    terminated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "resource_id"], name="resource_account_rid_uniq")]
        indexes = [models.Index(fields=["account", "is_terminated"]), models.Index(fields=["last_seen"])]

    def __str__(self) -> str:
        return self.name or self.resource_id


class ExportState(models.Model):
    """The export last loaded for an account's billing period: its fingerprint (the files' ETags), so an
    unchanged export is not downloaded and loaded again."""

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="export_states")
    billing_period = models.CharField(max_length=7, help_text="YYYY-MM")
    fingerprint = models.CharField(max_length=128)
    rows = models.IntegerField(default=0)
    loaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "billing_period"], name="export_state_account_period_uniq")
        ]
        ordering = ["account", "-billing_period"]

    def __str__(self) -> str:
        return f"{self.account.name} {self.billing_period} loaded {self.loaded_at:%Y-%m-%d %H:%M}"
