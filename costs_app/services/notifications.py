"""Delivery of alerts to notification channels (email, Slack incoming webhook, signed generic webhook)."""

import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import ssl
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_email

from costs_app.models import ChannelKind, NotificationChannel
from finops import egress
from finops.errors import TransientError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-FinOps-Signature"
USER_AGENT = "finops-notifier/1.0"


class NotificationError(Exception):
    """A channel could not be reached or refused the message. The message never contains the target.

    `retryable` is False when sending again cannot help (a revoked webhook answering 404, a target that
    is not an http(s) URL, no e-mail address): such a delivery fails at once instead of being retried.
    """

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


# A receiver answering one of these may accept the same message later; any other 4xx will not.
RETRYABLE_HTTP_STATUS = {408, 425, 429}


def error_is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NotificationError):
        return exc.retryable
    # The SMTP server refused every recipient: the addresses are wrong, a retry gets the same answer.
    return not isinstance(exc, smtplib.SMTPRecipientsRefused)


def error_text(channel: NotificationChannel, exc: BaseException) -> str:
    """A failure as one line for logs and the admin; our own errors never hold the target, others name the channel."""
    return str(exc) if isinstance(exc, NotificationError) else f"channel {channel.name!r}: {type(exc).__name__}: {exc}"


def webhook_signing_key(channel: NotificationChannel) -> bytes:
    """The channel's own secret, or one derived from SECRET_KEY so every webhook is signed by default.

    The derived key is stable per channel name; an operator can read it with this function
    (e.g. in a shell) to configure the receiver, or set an explicit secret on the channel.
    """
    secret = channel.get_signing_secret()
    if secret:
        return secret.encode()
    return hmac.new(settings.SECRET_KEY.encode(), f"finops-webhook:{channel.name}".encode(), hashlib.sha256).digest()


def sign(body: bytes, key: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


CHANNEL_KINDS = {ChannelKind.SLACK: egress.Kind.SLACK, ChannelKind.WEBHOOK: egress.Kind.WEBHOOK}


def channel_target_validate(*, kind: str, target: str) -> None:
    """Save time: an e-mail channel holds e-mail addresses, a Slack or webhook channel an https URL the egress
    policy allows. Raises ValidationError on "target"; the message never repeats the target (a webhook URL is a
    secret), at most its host."""
    if kind == ChannelKind.EMAIL:
        addresses = [address.strip() for address in str(target or "").split(",")]
        try:
            if not any(addresses):
                raise ValidationError("empty")
            for address in addresses:
                validate_email(address)
        except ValidationError:
            raise ValidationError(
                {"target": "an e-mail channel's target is a comma-separated list of e-mail addresses"}
            ) from None
        return
    if kind not in CHANNEL_KINDS:
        raise ValidationError({"kind": f"unknown channel kind {kind!r}"})
    try:
        egress.url_check(target, kind=CHANNEL_KINDS[kind], field="target")
    except egress.EgressRefused as exc:
        raise ValidationError({"target": exc.reason}) from None


def _post_json(*, channel: NotificationChannel, url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST under the egress policy (checked again now, DNS included; connected to the checked address), no
    redirects: a 3xx is a failed delivery, and the signature header is never sent to where it points."""
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    # Errors are re-raised without the URL (a webhook URL is a secret) and without chaining,
    # so the original exception's text cannot leak it into logs either.
    try:
        answer = egress.http_post(
            url,
            kind=CHANNEL_KINDS[channel.kind],
            field=f"channel {channel.name!r} target",
            body=body,
            headers=all_headers,
            timeout=settings.NOTIFICATION_TIMEOUT,
        )
    except egress.EgressRefused as exc:
        raise NotificationError(f"refused by the egress policy: {exc}", retryable=False) from None
    except TransientError:  # the host name did not resolve
        raise NotificationError(f"channel {channel.name!r}: cannot reach the receiver (name not resolved)") from None
    except ssl.SSLError as exc:
        raise NotificationError(
            f"channel {channel.name!r}: TLS failed talking to the receiver ({exc.reason or type(exc).__name__})"
        ) from None
    except OSError as exc:
        raise NotificationError(f"channel {channel.name!r}: cannot reach the receiver ({type(exc).__name__})") from None
    except http.client.HTTPException as exc:
        raise NotificationError(f"channel {channel.name!r}: {type(exc).__name__} talking to the receiver") from None
    status = answer.status
    if 300 <= status < 400:
        raise NotificationError(
            f"channel {channel.name!r}: HTTP {status} redirect from the receiver; redirects are not followed "
            "(give the final URL as the target)",
            retryable=False,
        )
    if status >= 400:
        permanent = 400 <= status < 500 and status not in RETRYABLE_HTTP_STATUS
        raise NotificationError(f"channel {channel.name!r}: HTTP {status} from the receiver", retryable=not permanent)


def channel_send(*, channel: NotificationChannel, subject: str, text: str, payload: dict) -> None:
    """Send one message to one channel; raises NotificationError (or the mail backend's error) on failure."""
    target = channel.get_target()
    if channel.kind == ChannelKind.EMAIL:
        recipients = [address.strip() for address in target.split(",") if address.strip()]
        if not recipients:
            raise NotificationError(f"channel {channel.name!r}: no email address configured", retryable=False)
        try:
            for address in recipients:
                validate_email(address)
        except ValidationError:
            # The mail server (EMAIL_HOST) is the operator's; the recipients must still be addresses, not
            # something a lenient SMTP server would interpret.
            raise NotificationError(
                f"channel {channel.name!r}: the target is not a list of e-mail addresses", retryable=False
            ) from None
        send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    elif channel.kind == ChannelKind.SLACK:
        body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
        _post_json(channel=channel, url=target, body=body, headers={})
    elif channel.kind == ChannelKind.WEBHOOK:
        body = json.dumps({"subject": subject, "text": text, **payload}, cls=DjangoJSONEncoder).encode()
        _post_json(
            channel=channel, url=target, body=body, headers={SIGNATURE_HEADER: sign(body, webhook_signing_key(channel))}
        )
    else:
        raise NotificationError(f"channel {channel.name!r}: unknown kind {channel.kind!r}", retryable=False)


def channels_notify(*, channels: Iterable[NotificationChannel], subject: str, text: str, payload: dict) -> list[str]:
    """Send to every channel; a failing channel is reported and does not stop the others. Returns the errors."""
    errors = []
    for channel in channels:
        try:
            channel_send(channel=channel, subject=subject, text=text, payload=payload)
        except Exception as exc:
            # str(exc) of our own errors never holds the target; other errors (SMTP) name the server at most.
            message = error_text(channel, exc)
            logger.warning("notification failed: %s", message)
            errors.append(message)
    return errors


def task_failure_notify(
    *, task_name: str, celery_task_id: str, error: str, correlation_id: str, account_id: int | None = None
) -> int:
    """Alert the active channels that asked for task failures and may hear of this one: organisation-wide channels
    (no team) always, a team's channels for failures of its own accounts' runs only. Returns how many got it."""
    from django.db.models import Q

    from providers_app.models import CloudAccount

    team_id = (
        CloudAccount.objects.filter(id=account_id).values_list("team_id", flat=True).first() if account_id else None
    )
    audience = Q(team__isnull=True) | (Q(team_id=team_id) if team_id is not None else Q(pk__in=[]))
    channels = list(NotificationChannel.objects.filter(audience, is_active=True, notify_task_failures=True))
    if not channels:
        return 0
    first_line = (error or "unknown error").strip().splitlines()[0][:500]
    subject = f"[FinOps] task {task_name} failed"
    text = (
        f"The task {task_name} failed after its last retry and is in the dead letters.\n"
        f"Error: {first_line}\nCelery task id: {celery_task_id}\nCorrelation id: {correlation_id}"
    )
    payload = {
        "event": "task_failed",
        "task_name": task_name,
        "celery_task_id": celery_task_id,
        "correlation_id": correlation_id,
        "error": first_line,
    }
    errors = channels_notify(channels=channels, subject=subject, text=text, payload=payload)
    return len(channels) - len(errors)
