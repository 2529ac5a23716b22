"""Admin for the clouds: accounts with their write-only credential, and the read-mostly resource inventory."""

import json
import time

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse

from finops.admin_mixins import TeamScopedAdminMixin

from .models import CloudAccount, Credential, Membership, Resource, Role, Team
from .selectors import is_platform_admin, visible_to
from .services.accounts import account_egress_validate
from .services.teams import team_member_remove, team_member_set

TRIGGER_PERMISSION = "tasks_app.trigger_tasks"


class WriteOnlyTextarea(forms.Textarea):
    """Never renders a value: not the stored secret, and not the one just typed when the form is redisplayed."""

    def format_value(self, value):
        return None


class WriteOnlyField(forms.CharField):
    """A secret input: empty means "keep what is stored"; masked while typed (a password input: a pasted JSON key
    loses only its line breaks, which JSON does not need)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", True)
        kwargs.setdefault(
            "widget", forms.PasswordInput(render_value=False, attrs={"size": 80, "autocomplete": "new-password"})
        )
        super().__init__(**kwargs)

    def has_changed(self, initial, data):
        return bool(data and data.strip())


class CredentialForm(forms.ModelForm):
    secret = WriteOnlyField(
        help_text="JSON document or plain string. Never shown again once saved; leave empty to keep the current one.",
    )

    class Meta:
        model = Credential
        fields = ("kind", "secret")

    def clean_secret(self):
        secret = self.cleaned_data.get("secret") or ""
        if secret.startswith(("{", "[")):
            try:
                json.loads(secret)
            except ValueError as exc:
                raise forms.ValidationError(f"looks like JSON but does not parse: {exc}") from None
        if not secret and not self.instance.ciphertext:
            raise forms.ValidationError("a new credential needs a secret")
        return secret

    def save(self, commit=True):
        credential = super().save(commit=False)
        secret = self.cleaned_data.get("secret")
        if secret:
            credential.set_secret(secret)
        if commit:
            credential.save()
        return credential


class CredentialInlineFormSet(forms.BaseInlineFormSet):
    """The credential's own URLs (a GCP key's token_uri, universe_domain) under the egress policy; it needs the
    account's provider, which only the formset knows (`self.instance`, the account with the form's values)."""

    def clean(self):
        super().clean()
        for form in self.forms:
            secret = (getattr(form, "cleaned_data", None) or {}).get("secret")
            if not secret or not secret.startswith("{"):
                continue
            try:
                parsed = json.loads(secret)
            except ValueError:
                continue  # CredentialForm already says it does not parse
            try:
                account_egress_validate(provider=self.instance.provider, settings=None, credentials=parsed)
            except ValidationError as exc:
                raise forms.ValidationError(exc.message_dict.get("credentials", exc.messages)) from None


# The settings a person sets per provider, as form fields (README's tables list them all; the rest stay in the
# "advanced settings" JSON): (key, label, help, kind) with kind "text", "list" (comma-separated) or "int".
PROVIDER_FIELDS = {
    "focus": [
        ("path", "Export path", "A FOCUS file or folder in FOCUS_IMPORT_ROOT (*.csv, *.csv.gz, *.parquet).", "text"),
    ],
    "aws": [
        ("bucket", "S3 bucket", "Where the CUR 2.0 / Data Exports / FOCUS export is delivered.", "text"),
        ("prefix", "Prefix", "s3://bucket/prefix/export_name/…", "text"),
        ("export_name", "Export name", "", "text"),
        ("regions", "Inventory regions", "Comma-separated, e.g. us-east-1, eu-west-1 (default us-east-1).", "list"),
    ],
    "azure": [
        ("subscription_ids", "Subscriptions", "Comma-separated subscription ids (default: the external id).", "list"),
        ("storage_account_url", "Storage account URL", "https://<account>.blob.core.windows.net", "text"),
        ("container", "Container", "The export's container.", "text"),
        ("directory", "Directory", "The export's directory in the container.", "text"),
        ("export_name", "Export name", "", "text"),
    ],
    "gcp": [
        ("source", "Source", '"bigquery" (default) or "gcs".', "text"),
        ("project", "Project", "Where the BigQuery export lives (default: the key's project_id).", "text"),
        ("dataset", "Dataset", "The billing export's BigQuery dataset.", "text"),
        ("bucket", "GCS bucket", "With source gcs: FOCUS files under gs://bucket/prefix.", "text"),
        ("prefix", "GCS prefix", "", "text"),
    ],
}


def provider_field_name(provider: str, key: str) -> str:
    return f"{provider}__{key}"


class CloudAccountForm(forms.ModelForm):
    """The account's settings as fields per provider (only the chosen provider's are shown, by
    finops/account_form.js; the JSON box keeps the advanced keys), validated at save: a FOCUS path must exist
    inside FOCUS_IMPORT_ROOT, endpoints follow the egress policy. Changing an endpoint needs the credential
    typed again in the same request (`credential_editable`: whether this user's page has the credential inline)."""

    credential_editable = False  # set per request by CloudAccountAdmin.get_form

    class Meta:
        model = CloudAccount
        fields = ("name", "provider", "external_id", "is_active", "settings")
        labels = {"settings": "Advanced settings (JSON)"}
        help_texts = {
            "settings": "Keys not offered above (see the README's table for the provider); a field above "
            "wins over the same key here."
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        current = self.instance.settings if isinstance(self.instance.settings, dict) else {}
        for key, _label, _help, kind in PROVIDER_FIELDS.get(self.instance.provider or "", []):
            value = current.get(key)
            if kind == "list" and isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if value is not None:
                self.initial.setdefault(provider_field_name(self.instance.provider, key), str(value))

    def _merged_settings(self, provider: str, settings: dict) -> dict:
        merged = dict(settings)
        for key, _label, _help, kind in PROVIDER_FIELDS.get(provider, []):
            name = provider_field_name(provider, key)
            value = (self.cleaned_data.get(name) or "").strip()
            if not value:
                if self.initial.get(name):  # emptied by the user: the key goes; never set: the JSON's stays
                    merged.pop(key, None)
                continue
            merged[key] = [v.strip() for v in value.split(",") if v.strip()] if kind == "list" else value
        return merged

    def clean(self):
        cleaned = super().clean()
        provider = cleaned.get("provider") or self.instance.provider
        settings = cleaned.get("settings")
        if provider and isinstance(settings, dict):
            settings = cleaned["settings"] = self._merged_settings(provider, settings)
            if provider == "focus" and settings.get("path"):
                self._check_focus_path(settings["path"])
        if provider and isinstance(settings, dict):
            entered = self.credential_editable and bool(str(self.data.get("credential-0-secret") or "").strip())
            try:
                account_egress_validate(
                    provider=provider,
                    settings=settings,
                    account=self.instance if self.instance.pk else None,
                    credential_entered=entered,
                )
            except ValidationError as exc:
                for message in exc.message_dict.get("settings", []):
                    self.add_error("settings", message)
        return cleaned

    def _check_focus_path(self, path) -> None:
        from .connectors.focus import FocusPathRefused, focus_path_resolve

        field = provider_field_name("focus", "path")
        target = field if field in self.fields else "settings"
        try:
            resolved = focus_path_resolve(path)
        except FocusPathRefused as exc:
            self.add_error(target, str(exc))
            return
        except (TypeError, ValueError):
            self.add_error(target, "a folder or file name (text)")
            return
        if not resolved.exists():
            self.add_error(target, f"{path!r} does not exist under FOCUS_IMPORT_ROOT")


# Declared on the class (the admin's form factory accepts only declared or model fields in its fieldsets).
for _provider, _specs in PROVIDER_FIELDS.items():
    for _key, _label, _help, _kind in _specs:
        CloudAccountForm.base_fields[provider_field_name(_provider, _key)] = CloudAccountForm.declared_fields[
            provider_field_name(_provider, _key)
        ] = forms.CharField(
            label=_label,
            help_text=_help,
            required=False,
            max_length=1000,
            widget=forms.TextInput(attrs={"size": 60, "data-provider": _provider}),
        )


class CredentialInline(admin.StackedInline):
    model = Credential
    form = CredentialForm
    formset = CredentialInlineFormSet
    fields = ("kind", "secret", "hint", "updated_at")
    readonly_fields = ("hint", "updated_at")
    extra = 0
    max_num = 1
    verbose_name = "credential"
    verbose_name_plural = "credential (write-only: stored encrypted, only the hint is shown)"

    def get_extra(self, request, obj=None, **kwargs):
        # An empty credential form on a new account; an existing credential shows its own form.
        return 1 if obj is None or not hasattr(obj, "credential") else 0


# --- Teams: platform admins manage them; memberships go through the service that keeps the role groups in line ---


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "role")
    extra = 1
    autocomplete_fields = ()


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "members", "created_at")
    search_fields = ("name",)
    inlines = (MembershipInline,)

    def get_queryset(self, request):
        from .selectors import teams_for

        return teams_for(request.user) if not is_platform_admin(request.user) else super().get_queryset(request)

    def has_add_permission(self, request):
        return is_platform_admin(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return is_platform_admin(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return is_platform_admin(request.user) and super().has_delete_permission(request, obj)

    @admin.display(description="members")
    def members(self, obj):
        return obj.memberships.count()

    def save_formset(self, request, form, formset, change):
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        # Through the service, so each user's role groups follow their memberships.
        for inline_form in formset.forms:
            data = getattr(inline_form, "cleaned_data", None) or {}
            if not data or not data.get("user"):
                continue
            if data.get("DELETE"):
                team_member_remove(team=form.instance, user=data["user"])
            elif inline_form.has_changed() or inline_form.instance.pk is None:
                if inline_form.instance.pk and inline_form.instance.user_id != data["user"].pk:
                    old = Membership.objects.get(pk=inline_form.instance.pk).user
                    team_member_remove(team=form.instance, user=old)
                team_member_set(team=form.instance, user=data["user"], role=data["role"])
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []


@admin.register(CloudAccount)
class CloudAccountAdmin(TeamScopedAdminMixin, admin.ModelAdmin):
    form = CloudAccountForm
    scope_path = ""  # the account itself
    list_display = (
        "name",
        "team",
        "provider",
        "external_id",
        "is_active",
        "credential_hint",
        "last_synced_at",
        "updated_at",
    )
    list_filter = ("provider", "is_active", ("team", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "external_id")
    readonly_fields = ("created_at", "updated_at", "last_synced_at")
    fields = ("name", "team", "provider", "external_id", "is_active", "settings", *readonly_fields)

    def get_fieldsets(self, request, obj=None):
        provider_sets = [
            (
                f"{label} settings",
                {
                    "fields": [provider_field_name(provider, key) for key, *_ in PROVIDER_FIELDS[provider]],
                    "classes": ("finops-provider-settings", f"finops-provider-{provider}"),
                },
            )
            for provider, label in (("focus", "FOCUS files"), ("aws", "AWS"), ("azure", "Azure"), ("gcp", "GCP"))
        ]
        return [
            (None, {"fields": ("name", "team", "provider", "external_id", "is_active")}),
            *provider_sets,
            ("Advanced", {"fields": ("settings",)}),
            ("History", {"fields": self.readonly_fields}),
        ]

    inlines = (CredentialInline,)
    actions = ("test_connection_now", "sync_cost_data_now", "discover_resources_now")
    change_form_template = "admin/providers_app/cloudaccount/change_form.html"
    # How long "Test connection" waits for the worker's answer before pointing at the run instead.
    connection_wait_s = 20.0

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("credential")

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        inline = CredentialInline(self.model, self.admin_site)
        editable = inline.has_change_permission(request, obj) or inline.has_add_permission(request, obj)
        return type(form.__name__, (form,), {"credential_editable": editable})

    @admin.display(description="credential")
    def credential_hint(self, obj):
        credential = getattr(obj, "credential", None)
        return (credential.hint or "set") if credential else "—"

    def has_trigger_permission(self, request) -> bool:
        return request.user.has_perm(TRIGGER_PERMISSION)

    def operable(self, request, queryset):
        """The accounts of `queryset` the user may act on: viewed (view permission) and operated (operator role);
        the others are named in a warning and left alone."""
        allowed = visible_to(queryset, request.user, account_path="", role=Role.OPERATOR, permission="view")
        refused = queryset.exclude(pk__in=allowed.values("pk")).count()
        if refused:
            self.message_user(
                request, f"{refused} account(s) left alone: you are not an operator of their team", messages.WARNING
            )
        return allowed

    def _enqueue_per_account(self, request, queryset, task_name: str) -> None:
        from tasks_app.models import TriggerKind
        from tasks_app.services.runs import task_enqueue

        queryset = self.operable(request, queryset)
        with transaction.atomic():
            ids = [
                task_enqueue(
                    task_name=task_name,
                    kwargs={"account_id": account.id},
                    triggered_by=TriggerKind.ADMIN,
                    user=request.user,
                    trigger_detail=f"{task_name} for {account.name}",
                ).celery_task_id
                for account in queryset
            ]
        self.message_user(request, f"Enqueued {task_name} for {len(ids)} account(s): {', '.join(ids)}")

    def get_urls(self):
        view = self.admin_site.admin_view(self.test_connection_view)
        name = f"{self.model._meta.app_label}_{self.model._meta.model_name}_test_connection"
        return [path("<int:object_id>/test-connection/", view, name=name), *super().get_urls()]

    def test_connection_view(self, request, object_id: int):
        if request.method != "POST":
            return redirect(reverse("admin:providers_app_cloudaccount_change", args=[object_id]))
        if not self.has_trigger_permission(request):
            raise PermissionDenied
        # Trigger permission alone is not enough: the account must be one the user views and operates.
        accounts = visible_to(CloudAccount.objects.all(), request.user, account_path="", role=Role.OPERATOR)
        account = get_object_or_404(accounts, pk=object_id)
        self._test_connections(request, [account])
        return redirect(reverse("admin:providers_app_cloudaccount_change", args=[object_id]))

    @admin.action(description="Test connection", permissions=["trigger"])
    def test_connection_now(self, request, queryset):
        self._test_connections(request, list(self.operable(request, queryset)))

    def _test_connections(self, request, accounts: list[CloudAccount]) -> None:
        """Enqueue check_provider_connection per account (the worker does it) and show the answers."""
        from tasks_app.models import FINAL_STATES, RunState, TaskRun, TriggerKind
        from tasks_app.services.runs import task_enqueue

        if not accounts:
            return
        with transaction.atomic():
            runs = [
                task_enqueue(
                    task_name="check_provider_connection",
                    kwargs={"account_id": account.id},
                    triggered_by=TriggerKind.ADMIN,
                    user=request.user,
                    trigger_detail=f"test connection of {account.name}",
                )
                for account in accounts
            ]
        deadline = time.monotonic() + self.connection_wait_s
        pending = {run.pk for run in runs}
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            pending -= set(TaskRun.objects.filter(pk__in=pending, state__in=FINAL_STATES).values_list("pk", flat=True))
        for run in TaskRun.objects.filter(pk__in=[r.pk for r in runs]):
            result = run.result if isinstance(run.result, dict) else {}
            if run.state == RunState.SUCCESS and result.get("ok"):
                self.message_user(request, result.get("summary", "connection OK"), messages.SUCCESS)
            elif run.state == RunState.SUCCESS:
                self.message_user(request, result.get("summary", "connection failed"), messages.ERROR)
            elif run.state in FINAL_STATES:
                self.message_user(request, f"connection test {run.state}: {run.error}", messages.ERROR)
            else:
                url = reverse("admin:tasks_app_taskrun_change", args=[run.pk])
                self.message_user(
                    request,
                    f"connection test still {run.state} after {self.connection_wait_s:.0f}s (is a worker consuming "
                    f"queue {run.queue!r}?); its answer will be on run {url}",
                    messages.WARNING,
                )

    @admin.action(description="Sync cost data now", permissions=["trigger"])
    def sync_cost_data_now(self, request, queryset):
        self._enqueue_per_account(request, queryset, "sync_provider_cost_data")

    @admin.action(description="Discover resources now", permissions=["trigger"])
    def discover_resources_now(self, request, queryset):
        self._enqueue_per_account(request, queryset, "discover_provider_resources")


@admin.register(Resource)
class ResourceAdmin(TeamScopedAdminMixin, admin.ModelAdmin):
    """The inventory is written by discovery; people look, filter and (rarely) delete."""

    list_display = (
        "resource_id",
        "name",
        "account",
        "resource_type",
        "service_name",
        "region",
        "state",
        "is_terminated",
        "last_seen",
    )
    list_filter = (
        "account__provider",
        "resource_type",
        "region",
        "is_terminated",
        ("account", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("resource_id", "name")
    list_select_related = ("account",)
    show_full_result_count = False
    readonly_fields = (
        "account",
        "resource_id",
        "resource_type",
        "service_name",
        "region",
        "name",
        "state",
        "tags",
        "attributes",
        "first_seen",
        "last_seen",
        "is_terminated",
        "terminated_at",
    )

    def has_add_permission(self, request):
        return False
