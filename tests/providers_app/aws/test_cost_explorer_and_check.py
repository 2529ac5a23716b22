"""Cost Explorer as the cost source (moto's queued GetCostAndUsage results, two pages), the connection check's
findings (bad key, missing permission, missing bucket, no export yet, assumed role), and error translation."""

import json
from datetime import date
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from django.db.models import Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import account_cost_sync
from finops.errors import PermanentError, TransientError
from providers_app.connectors import connection_check
from providers_app.connectors.aws import resource_source
from providers_app.connectors.aws.cost_explorer import CostExplorerSource
from providers_app.connectors.aws.session import error_translate
from providers_app.models import Credential
from tests.factories import CloudAccountFactory
from tests.providers_app.aws import cur_files as f
from tests.providers_app.aws.conftest import ACCOUNT_ID, KEYS

pytestmark = pytest.mark.django_db
BUCKET = "acme-billing"


def account_with(moto, secret=KEYS, name="acme-aws", **settings):
    account = CloudAccountFactory(
        provider="aws",
        name=name,
        external_id="",
        settings={"bucket": BUCKET, "prefix": "cur", "export_name": "finops", "endpoint_url": moto.url, **settings},
    )
    credential = Credential(account=account, kind="access_key")
    credential.set_secret(secret)
    credential.save()
    return account


def day(start: str, end: str, groups: list[tuple[str, str, str, str]], estimated=False) -> dict:
    return {
        "TimePeriod": {"Start": start, "End": end},
        "Total": {},
        "Groups": [
            {
                "Keys": [service, linked],
                "Metrics": {
                    "UnblendedCost": {"Amount": unblended, "Unit": "USD"},
                    "AmortizedCost": {"Amount": amortized, "Unit": "USD"},
                    "NetUnblendedCost": {"Amount": unblended, "Unit": "USD"},
                    "UsageQuantity": {"Amount": "10", "Unit": "N/A"},
                },
            }
            for service, linked, unblended, amortized in groups
        ],
        "Estimated": estimated,
    }


PAGE_1 = {
    "ResultsByTime": [
        day("2024-09-29", "2024-09-30",
            [("Amazon Elastic Compute Cloud - Compute", "111111111111", "12.3456789012", "10.5")]),
        day("2024-09-30", "2024-10-01",
            [("Amazon Simple Storage Service", "222222222222", "0.0000300172", "0.0000300172"),
             ("Tax", "111111111111", "1.25", "1.25")]),
    ],
    "NextPageToken": "page-2",
    "DimensionValueAttributes": [],
}  # fmt: skip
PAGE_2 = {
    "ResultsByTime": [
        day("2024-10-01", "2024-10-02", [("Amazon Relational Database Service", "111111111111", "4.5", "4.5")],
            estimated=True),
    ],
    "DimensionValueAttributes": [],
}  # fmt: skip


def test_cost_explorer_pages_map_to_focus_rows_and_an_unchanged_answer_is_skipped(moto):
    # given: moto answers the first GetCostAndUsage with page 1 (NextPageToken), the follow-up with page 2
    moto.post("/moto-api/static/ce/cost-and-usage-results", json.dumps({"results": [PAGE_1, PAGE_2]}).encode())
    account = account_with(moto, source="cost_explorer")
    # when
    result = account_cost_sync(account_id=account.id)
    # then: every group of both pages, in its billing period
    assert result.periods == {"2024-09": 3, "2024-10": 1}
    assert not [v for v in result.report["violations"] if v["severity"] == "error"]
    lines = {line.service_name: line for line in CostLineItem.objects.filter(account=account)}
    ec2 = lines["Amazon Elastic Compute Cloud - Compute"]
    assert (ec2.billed_cost, ec2.effective_cost, ec2.list_cost) == (
        Decimal("12.3456789012"),
        Decimal("10.5"),
        Decimal("12.3456789012"),
    )
    assert (ec2.service_category, ec2.charge_category, ec2.sub_account_id) == ("Compute", "Usage", "111111111111")
    assert ec2.billing_account_id == ACCOUNT_ID  # from sts:GetCallerIdentity
    assert ec2.charge_period_start.isoformat() == "2024-09-29T00:00:00+00:00"
    assert ec2.billing_period_start.isoformat() == "2024-09-01T00:00:00+00:00"
    assert lines["Tax"].charge_category == "Tax"
    assert lines["Amazon Simple Storage Service"].service_category == "Storage"
    assert lines["Amazon Relational Database Service"].charge_description.endswith("(Cost Explorer, estimated)")
    assert lines["Amazon Relational Database Service"].region_id is None  # Cost Explorer cannot say
    total = CostLineItem.objects.filter(account=account).aggregate(t=Sum("billed_cost"))["t"]
    assert total == Decimal("12.3456789012") + Decimal("0.0000300172") + Decimal("1.25") + Decimal("4.5")

    # when: the same answer again (moto repeats its answer for the same request)
    again = account_cost_sync(account_id=account.id)
    # then
    assert again.unchanged_periods == ["2024-09", "2024-10"] and again.rows_loaded == 0


def test_cost_explorer_window_covers_the_configured_months_up_to_today():
    account = CloudAccountFactory(provider="aws", settings={"source": "cost_explorer", "cost_explorer_months": 3})
    source = CostExplorerSource(account, today=date(2024, 11, 15))
    assert source.window(None) == (date(2024, 9, 1), date(2024, 11, 15))
    assert source.window("2024-10") == (date(2024, 10, 1), date(2024, 11, 1))
    assert source.window("2024-11") == (date(2024, 11, 1), date(2024, 11, 15))


def test_connection_check_passes_and_names_no_export_and_a_missing_bucket(moto):
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    report = connection_check(account_with(moto))
    assert not report.ok
    assert report.summary().startswith(
        "acme-aws: export manifest failed: no export yet: no finops-Manifest.json under s3://acme-billing/cur/finops/"
    )

    f.put_data_export(s3, BUCKET, "cur", "finops", "2024-09", {"x.csv.gz": f.csv_gz(f.cur2_rows("2024-09", 2))})
    report = connection_check(account_with(moto, name="ok"))
    assert report.ok, report.summary()
    assert [c.name for c in report.checks] == [
        "settings and credential", "credentials", "s3:ListBucket on arn:aws:s3:::acme-billing", "export manifest",
        "ec2:DescribeRegions", "ec2:DescribeInstances",
    ]  # fmt: skip
    assert "1 billing period(s), newest 2024-09: 1 file(s)" in report.checks[3].detail

    report = connection_check(account_with(moto, name="nobucket", bucket="nowhere"))
    assert "s3:ListBucket on arn:aws:s3:::nowhere failed:" in report.summary()
    assert "the bucket does not exist (NoSuchBucket)" in report.summary()

    report = connection_check(account_with(moto, {"access_key_id": "AKIA"}, name="half"))
    assert (
        report.summary()
        == "half: settings and credential failed: aws account 'half': the credential has no secret_access_key"
    )


def test_assumed_role_is_used_for_every_call(moto):
    iam = moto.client("iam")
    role = iam.create_role(
        RoleName="finops-reader", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )
    secret = {**KEYS, "role_arn": role["Role"]["Arn"], "external_id": "acme-ext-1"}
    report = connection_check(account_with(moto, secret, name="role", source="cost_explorer"))
    assert report.ok, report.summary()
    assert report.checks[1].name == "sts:AssumeRole" and report.checks[1].detail == role["Role"]["Arn"]
    assert "assumed-role/finops-reader" in report.checks[2].detail


def test_connection_check_names_a_bad_key_and_the_missing_permission(moto, iam_enforced):
    report = connection_check(
        account_with(moto, {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "x" * 40})
    )
    assert report.summary() == (
        "acme-aws: credentials failed: sts:GetCallerIdentity: the access key id is not valid (InvalidClientTokenId)"
    )
    report = connection_check(account_with(moto, iam_enforced["no-s3"], name="limited"))
    assert report.checks[1].ok  # the key is good
    assert report.summary().startswith(
        "limited: s3:ListBucket on arn:aws:s3:::acme-billing failed: AccessDenied: s3:ListBucket on "
        "arn:aws:s3:::acme-billing (prefix cur/finops/) is not allowed for these credentials"
    )
    with pytest.raises(PermanentError, match=r"^AccessDenied: s3:ListBucket on arn:aws:s3:::acme-billing"):
        account_cost_sync(account_id=CloudAccountFactory._meta.model.objects.get(name="limited").id)

    manifest = "arn:aws:s3:::acme-billing/cur/finops/metadata/BILLING_PERIOD=2024-09/finops-Manifest.json"
    list_only = account_with(moto, iam_enforced["list-only"], name="list-only")
    report = connection_check(list_only)
    assert report.summary().startswith(
        f"list-only: s3:GetObject on {manifest} failed: AccessDenied: s3:GetObject on {manifest} is not allowed"
    )
    with pytest.raises(PermanentError, match=rf"^AccessDenied: s3:GetObject on {manifest} is not allowed"):
        account_cost_sync(account_id=list_only.id)

    report = connection_check(account_with(moto, iam_enforced["no-ec2"], name="no-ec2"))
    assert [c.name for c in report.checks if c.ok][-1] == "export manifest"
    assert report.summary().startswith(
        "no-ec2: ec2:DescribeRegions failed: AccessDenied: ec2:DescribeRegions is not allowed for these credentials"
    )


def client_error(code: str, status: int, message: str = "m") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (
            client_error("Throttling", 400, "Rate exceeded"),
            TransientError,
            "ce:GetCostAndUsage: Throttling: Rate exceeded",
        ),
        (client_error("ThrottlingException", 400), TransientError, "ThrottlingException"),
        (client_error("LimitExceededException", 400), TransientError, "LimitExceededException"),
        (client_error("RequestLimitExceeded", 503), TransientError, "RequestLimitExceeded"),
        (client_error("SlowDown", 503), TransientError, "SlowDown"),
        (client_error("InternalError", 500), TransientError, "InternalError"),
        (client_error("Weird", 502), TransientError, "Weird"),
        (
            EndpointConnectionError(endpoint_url="https://ce.us-east-1.amazonaws.com"),
            TransientError,
            "EndpointConnectionError",
        ),
        (ReadTimeoutError(endpoint_url="https://s3"), TransientError, "ReadTimeoutError"),
        (client_error("AccessDenied", 403, "no"), PermanentError, "AccessDenied: ce:GetCostAndUsage is not allowed"),
        (client_error("UnauthorizedOperation", 403), PermanentError, "AccessDenied: ce:GetCostAndUsage is not allowed"),
        (client_error("InvalidClientTokenId", 403), PermanentError, "the access key id is not valid"),
        (client_error("SignatureDoesNotMatch", 403), PermanentError, "secret access key does not match"),
        (client_error("ExpiredToken", 400), PermanentError, "session token has expired"),
        (client_error("NoSuchBucket", 404), PermanentError, "the bucket does not exist (NoSuchBucket)"),
    ],
)
def test_botocore_errors_translate_to_transient_or_permanent_naming_the_action(error, kind, text):
    translated = error_translate(error, "ce:GetCostAndUsage")
    assert isinstance(translated, kind)
    assert text in str(translated)


def test_throttled_sdk_calls_raise_transient_errors_after_the_sdks_two_attempts(moto, flaky_proxy):
    # given: a proxy answering EC2's RequestLimitExceeded / STS's Throttling to the first 2 requests
    proxy = flaky_proxy(2)
    account = account_with(moto, name="ec2-throttled", source="cost_explorer", endpoint_url=proxy.url)
    # when / then: discovery's first call gives up after 2 attempts, as a transient error naming the action
    with pytest.raises(TransientError, match=r"^ec2:DescribeInstances on region us-east-1: RequestLimitExceeded"):
        list(resource_source(account).resources())
    assert proxy.failed == 2 and proxy.seen == 2
    proxy.failures = 4  # two more: sts
    with pytest.raises(TransientError, match=r"^sts:GetCallerIdentity: Throttling: Rate exceeded"):
        CostExplorerSource(account).billing_account_id()
    assert list(resource_source(account).resources()) == []  # then it answers


def test_cost_explorer_grouped_by_region_fills_region_instead_of_sub_account(moto):
    page = {
        "ResultsByTime": [
            day("2024-09-29", "2024-09-30", [("Amazon Elastic Compute Cloud - Compute", "eu-west-1", "2.5", "2.5"),
                                             ("Tax", "NoRegion", "0.5", "0.5")]),
        ],
    }  # fmt: skip
    moto.post("/moto-api/static/ce/cost-and-usage-results", json.dumps({"results": [page]}).encode())
    account = account_with(moto, source="cost_explorer", cost_explorer_group_by="region")
    result = account_cost_sync(account_id=account.id)
    assert result.periods == {"2024-09": 2}
    lines = {line.service_name: line for line in CostLineItem.objects.filter(account=account)}
    ec2 = lines["Amazon Elastic Compute Cloud - Compute"]
    assert (ec2.region_id, ec2.sub_account_id) == ("eu-west-1", None)
    assert lines["Tax"].region_id is None
    with pytest.raises(PermanentError, match="cost_explorer_group_by must be LINKED_ACCOUNT or REGION"):
        CostExplorerSource(account_with(moto, name="bad", source="cost_explorer", cost_explorer_group_by="AZ"))
