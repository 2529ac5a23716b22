"""AWS account settings and credentials, boto3 clients built from them, and botocore errors in the platform's terms.

Nothing else in the project imports boto3: the connector's other modules get their clients from `AwsContext`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from django.conf import settings as django_settings

from finops.errors import PermanentError, TransientError

SOURCES = ("export", "cost_explorer")
LAYOUTS = ("auto", "data_exports", "legacy_cur")
TABLES = ("auto", "cur", "focus")
FORMATS = ("auto", "csv", "parquet")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")


@dataclass(frozen=True)
class AwsSettings:
    """`CloudAccount.settings` of an AWS account (see the package docstring for the shape)."""

    source: str = "export"
    bucket: str = ""
    prefix: str = ""
    export_name: str = ""
    layout: str = "auto"
    table: str = "auto"
    format: str = "auto"  # what the export's files must be: "csv" (CSV / CSV.gz), "parquet", or "auto" (either)
    regions: tuple[str, ...] = ("us-east-1",)
    region: str = "us-east-1"  # the bucket's / STS / Cost Explorer's region
    endpoint_url: str = ""  # one endpoint for every service (moto, LocalStack, an S3-compatible store)
    endpoint_urls: dict = field(default_factory=dict)  # per service: {"s3": ..., "ec2": ...}
    cpu_lookback_days: int = 14
    cost_explorer_months: int = 3
    cost_explorer_group_by: str = "LINKED_ACCOUNT"  # the second GroupBy dimension: LINKED_ACCOUNT or REGION

    @classmethod
    def parse(cls, account) -> AwsSettings:
        raw = dict(account.settings or {})
        name = account.name
        source = raw.get("source", "export")
        if source not in SOURCES:
            raise PermanentError(f"aws account {name!r}: settings.source {source!r} is not one of {', '.join(SOURCES)}")
        layout = raw.get("layout", "auto")
        if layout not in LAYOUTS:
            raise PermanentError(f"aws account {name!r}: settings.layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        table = raw.get("table", raw.get("format_table", "auto"))
        if table not in TABLES:
            raise PermanentError(f"aws account {name!r}: settings.table {table!r} is not one of {', '.join(TABLES)}")
        file_format = str(raw.get("format") or "auto").lower()
        if file_format not in FORMATS:
            raise PermanentError(
                f"aws account {name!r}: settings.format {file_format!r} is not one of {', '.join(FORMATS)}"
            )
        if source == "export":
            for key in ("bucket", "export_name"):
                if not str(raw.get(key) or "").strip():
                    raise PermanentError(f"aws account {name!r}: settings.{key} is required when source is 'export'")
        regions = raw.get("regions") or [raw.get("region") or "us-east-1"]
        if isinstance(regions, str):
            regions = [r.strip() for r in regions.split(",") if r.strip()]
        bad = [r for r in regions if not isinstance(r, str) or not REGION_RE.match(r)]
        if bad:
            raise PermanentError(f"aws account {name!r}: settings.regions has invalid region names: {bad}")
        endpoint_urls = raw.get("endpoint_urls") or {}
        if not isinstance(endpoint_urls, dict):
            raise PermanentError(f"aws account {name!r}: settings.endpoint_urls must be an object {{service: url}}")
        try:
            lookback = int(raw.get("cpu_lookback_days", 14))
            months = int(raw.get("cost_explorer_months", 3))
        except (TypeError, ValueError):
            raise PermanentError(
                f"aws account {name!r}: settings.cpu_lookback_days and cost_explorer_months are whole numbers"
            ) from None
        if not 1 <= lookback <= 63:  # GetMetricData keeps hourly data for 63 days
            raise PermanentError(f"aws account {name!r}: settings.cpu_lookback_days must be between 1 and 63")
        group_by = str(raw.get("cost_explorer_group_by") or "LINKED_ACCOUNT").upper()
        if group_by not in ("LINKED_ACCOUNT", "REGION"):
            raise PermanentError(
                f"aws account {name!r}: settings.cost_explorer_group_by must be LINKED_ACCOUNT or REGION"
            )
        if not 1 <= months <= 14:  # Cost Explorer answers for the last 14 months
            raise PermanentError(f"aws account {name!r}: settings.cost_explorer_months must be between 1 and 14")
        return cls(
            source=source,
            bucket=str(raw.get("bucket") or "").strip(),
            prefix=str(raw.get("prefix") or "").strip().strip("/"),
            export_name=str(raw.get("export_name") or raw.get("report_name") or "").strip(),
            layout=layout,
            table=table,
            format=file_format,
            regions=tuple(regions),
            region=raw.get("region") or regions[0],
            endpoint_url=str(raw.get("endpoint_url") or ""),
            endpoint_urls=dict(endpoint_urls),
            cpu_lookback_days=lookback,
            cost_explorer_months=months,
            cost_explorer_group_by=group_by,
        )

    def endpoint(self, service: str) -> str | None:
        return self.endpoint_urls.get(service) or self.endpoint_url or None

    def endpoint_checked(self, service: str) -> str | None:
        """The service's endpoint under the egress policy, resolved and checked now (right before a client is
        built with it); None is boto's own endpoint for the region, an amazonaws.com host."""
        from finops.egress import Kind

        from ..endpoints import endpoint_now

        field = f"settings.endpoint_urls.{service}" if self.endpoint_urls.get(service) else "settings.endpoint_url"
        return endpoint_now(self.endpoint(service), kind=Kind.AWS, field=field)


@dataclass(frozen=True)
class AwsCredentials:
    """The account's secret: an access key pair, and/or a role to assume (with its external id)."""

    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    role_arn: str = ""
    external_id: str = ""
    role_session_name: str = "finops"

    @classmethod
    def parse(cls, account) -> AwsCredentials:
        credential = getattr(account, "credential", None) if account.pk else None
        if credential is None:
            return cls()  # the default chain (instance profile, env, ~/.aws) of the worker
        secret = credential.get_secret()
        if not isinstance(secret, dict):
            raise PermanentError(
                f"aws account {account.name!r}: the credential must be a JSON object "
                "(access_key_id + secret_access_key, and/or role_arn + external_id)"
            )

        def pick(*names: str) -> str:
            for n in names:
                if secret.get(n):
                    return str(secret[n]).strip()
            return ""

        creds = cls(
            access_key_id=pick("access_key_id", "aws_access_key_id"),
            secret_access_key=pick("secret_access_key", "aws_secret_access_key"),
            session_token=pick("session_token", "aws_session_token"),
            role_arn=pick("role_arn"),
            external_id=pick("external_id"),
            role_session_name=pick("role_session_name") or "finops",
        )
        if bool(creds.access_key_id) != bool(creds.secret_access_key):
            missing = "secret_access_key" if creds.access_key_id else "access_key_id"
            raise PermanentError(f"aws account {account.name!r}: the credential has no {missing}")
        if creds.role_arn and not ROLE_ARN_RE.match(creds.role_arn):
            raise PermanentError(
                f"aws account {account.name!r}: role_arn {creds.role_arn!r} is not an IAM role ARN "
                "(arn:aws:iam::123456789012:role/NAME)"
            )
        if not creds.access_key_id and not creds.role_arn:
            raise PermanentError(
                f"aws account {account.name!r}: the credential has neither access_key_id/secret_access_key nor role_arn"
            )
        return creds

    @property
    def kind(self) -> str:
        if self.role_arn:
            return "assume_role"
        return "access_key" if self.access_key_id else "default_chain"


def sdk_config():
    from botocore.config import Config

    # Few SDK retries: the platform's policy (backoff, max retries, dead letter) is what retries.
    return Config(
        retries={"total_max_attempts": django_settings.AWS_SDK_MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=django_settings.AWS_SDK_TIMEOUT,
        read_timeout=django_settings.AWS_SDK_TIMEOUT,
    )


class AwsContext:
    """One account's boto3 session (the role assumed once) and its clients."""

    def __init__(self, account):
        self.account = account
        self.settings = AwsSettings.parse(account)
        self.credentials = AwsCredentials.parse(account)
        self._clients: dict[tuple[str, str], object] = {}

    @cached_property
    def session(self):
        import boto3

        creds = self.credentials
        base = boto3.Session(
            aws_access_key_id=creds.access_key_id or None,
            aws_secret_access_key=creds.secret_access_key or None,
            aws_session_token=creds.session_token or None,
            region_name=self.settings.region,
        )
        if not creds.role_arn:
            return base
        endpoint = self.settings.endpoint_checked("sts")
        sts = base.client("sts", region_name=self.settings.region, endpoint_url=endpoint, config=sdk_config())
        kwargs = {"RoleArn": creds.role_arn, "RoleSessionName": creds.role_session_name}
        if creds.external_id:
            kwargs["ExternalId"] = creds.external_id
        with aws_errors("sts:AssumeRole", creds.role_arn):
            temporary = sts.assume_role(**kwargs)["Credentials"]
        return boto3.Session(
            aws_access_key_id=temporary["AccessKeyId"],
            aws_secret_access_key=temporary["SecretAccessKey"],
            aws_session_token=temporary["SessionToken"],
            region_name=self.settings.region,
        )

    def client(self, service: str, region: str | None = None):
        region = region or self.settings.region
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self.session.client(
                service, region_name=region, endpoint_url=self.settings.endpoint_checked(service), config=sdk_config()
            )
        return self._clients[key]


# --- errors ---

TRANSIENT_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "SlowDown",
        "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable", "ServiceUnavailableException", "InternalError",
        "InternalFailure", "InternalServerError", "RequestTimeout", "RequestTimeoutException",
        "PriorRequestNotComplete",
        "EC2ThrottledException", "BandwidthLimitExceeded",
    }
)  # fmt: skip
DENIED_CODES = frozenset(
    {
        "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "Forbidden",
        "AllAccessDisabled", "UnauthorizedException",
    }
)  # fmt: skip
BAD_CREDENTIAL_CODES = {
    "InvalidClientTokenId": "the access key id is not valid (InvalidClientTokenId)",
    "InvalidAccessKeyId": "the access key id is not valid (InvalidAccessKeyId)",
    "UnrecognizedClientException": "the access key id is not valid (UnrecognizedClientException)",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id (SignatureDoesNotMatch)",
    "IncompleteSignature": "the request signature is incomplete: check the secret access key (IncompleteSignature)",
    "ExpiredToken": "the session token has expired (ExpiredToken): issue new credentials",
    "ExpiredTokenException": "the session token has expired (ExpiredTokenException): issue new credentials",
    "InvalidToken": "the session token is not valid (InvalidToken)",
    "AuthFailure": "AWS could not validate the credentials (AuthFailure)",
}


def bucket_arn(bucket: str, key: str = "") -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")


def error_translate(exc: Exception, action: str, resource: str = "") -> Exception:
    """A botocore/boto3 exception as TransientError or PermanentError whose message names `action` (an IAM action,
    e.g. "s3:ListBucket") and the resource; any other exception is returned unchanged."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    on = f" on {resource}" if resource else ""
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError):
        return TransientError(f"{action}{on}: {type(exc).__name__}: {exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PermanentError(f"{action}{on}: no AWS credentials found ({exc}); give the account a credential")
    if not isinstance(exc, ClientError):
        from botocore.exceptions import BotoCoreError
        from botocore.parsers import ResponseParserError

        if isinstance(exc, ResponseParserError):
            # Its text carries the whole reply body: whatever the endpoint answered (an internal page, the app's
            # own /healthz) would end up in run errors and dead letters. Say what happened, not what came back.
            error = PermanentError(f"{action}{on}: the endpoint's answer is not an AWS API response")
            error.hide_cause = True  # aws_errors raises it unchained: the cause's text is the body
            return error
        if isinstance(exc, BotoCoreError):
            return TransientError(f"{action}{on}: {type(exc).__name__}: {_short(str(exc))}")
        return exc
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))[:100]
    message = _short(str(error.get("Message", "")))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    detail = f"{code}: {message}" if message else code
    # Cost Explorer says "too many calls" with LimitExceededException (elsewhere that code is a quota).
    ce_rate = code == "LimitExceededException" and action.startswith("ce:")
    if code in TRANSIENT_CODES or ce_rate or status >= 500 or status == 429:
        return TransientError(f"{action}{on}: {detail or f'HTTP {status}'}")
    if code in BAD_CREDENTIAL_CODES:
        return PermanentError(f"{action}{on}: {BAD_CREDENTIAL_CODES[code]}")
    if code in DENIED_CODES or status == 403:
        return PermanentError(f"AccessDenied: {action}{on} is not allowed for these credentials ({detail})")
    if code == "NoSuchBucket":
        return PermanentError(f"{action}{on}: the bucket does not exist (NoSuchBucket)")
    if code in ("NoSuchKey", "404", "NotFound"):
        return PermanentError(f"{action}{on}: the object does not exist ({code})")
    return PermanentError(f"{action}{on}: {detail or f'HTTP {status}'}")


def _short(text: str, limit: int = 300) -> str:
    """An error text from the far end, on one line and bounded: enough to act on, never a whole reply body."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def aws_errors(action: str, resource: str = "") -> Iterator[None]:
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:
        translated = error_translate(exc, action, resource)
        if translated is exc:
            raise
        if getattr(translated, "hide_cause", False):
            raise translated from None
        raise translated from exc
