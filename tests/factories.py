"""factory_boy factories for the models tests need most."""

from datetime import UTC, datetime
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from costs_app.models import Budget, ChannelKind, CostLineItem, NotificationChannel, thresholds_parse
from providers_app.models import CloudAccount, Provider, Resource, Team
from providers_app.services.teams import team_default


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pass-word-123")


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"team-{n}")


class CloudAccountFactory(factory.django.DjangoModelFactory):
    """In the team "Default" unless told otherwise (the `user` / `trigger_user` fixtures are members of it)."""

    class Meta:
        model = CloudAccount

    team = factory.LazyFunction(team_default)
    provider = Provider.FOCUS
    name = factory.Sequence(lambda n: f"account-{n}")
    external_id = factory.Sequence(lambda n: f"{100000000000 + n}")
    settings = factory.LazyFunction(dict)


class ResourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Resource

    account = factory.SubFactory(CloudAccountFactory)
    resource_id = factory.Sequence(lambda n: f"i-{n:08x}")
    resource_type = "Virtual Machine"
    region = "us-east-1"


class CostLineItemFactory(factory.django.DjangoModelFactory):
    """A valid FOCUS 1.2 usage line; override what the test is about."""

    class Meta:
        model = CostLineItem

    account = factory.SubFactory(CloudAccountFactory)
    billed_cost = Decimal("10.00")
    effective_cost = factory.SelfAttribute("billed_cost")
    list_cost = factory.SelfAttribute("billed_cost")
    contracted_cost = factory.SelfAttribute("billed_cost")
    billing_account_id = "123456789012"
    billing_currency = "USD"
    billing_period_start = datetime(2024, 9, 1, tzinfo=UTC)
    billing_period_end = datetime(2024, 10, 1, tzinfo=UTC)
    charge_period_start = datetime(2024, 9, 15, tzinfo=UTC)
    charge_period_end = datetime(2024, 9, 16, tzinfo=UTC)
    charge_category = "Usage"
    charge_frequency = "Usage-Based"
    invoice_issuer_name = "Amazon Web Services, Inc."
    provider_name = "AWS"
    publisher_name = "Amazon Web Services, Inc."
    service_category = "Compute"
    service_name = "Amazon Elastic Compute Cloud"
    region_id = "us-east-1"


class NotificationChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = NotificationChannel

    name = factory.Sequence(lambda n: f"channel-{n}")
    team = factory.LazyFunction(team_default)
    kind = ChannelKind.EMAIL
    target = "finops@example.com"

    @classmethod
    def _create(cls, model_class, *args, target=None, **kwargs):
        channel = model_class(*args, **kwargs)
        channel.set_target(target)
        channel.save()
        return channel


class BudgetFactory(factory.django.DjangoModelFactory):
    """`account=` (one) or `accounts=` (several) scope it; `thresholds` may use the shorthand (bare percentages)."""

    class Meta:
        model = Budget

    name = factory.Sequence(lambda n: f"budget-{n}")
    amount = Decimal("1000.00")
    currency = "USD"

    @classmethod
    def _create(cls, model_class, *args, account=None, accounts=(), thresholds=None, **kwargs):
        if thresholds is not None:
            kwargs["thresholds"] = [t.as_json() for t in thresholds_parse(thresholds)]
        budget = model_class(*args, **kwargs)
        budget.save()
        scoped = ([account] if account is not None else []) + list(accounts)
        if scoped:
            budget.accounts.set(scoped)
        return budget
