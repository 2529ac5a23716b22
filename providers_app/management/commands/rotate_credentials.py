"""`manage.py rotate_credentials`: re-encrypt every stored secret with the first key of ENCRYPTION_KEY."""

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from costs_app.models import NotificationChannel
from finops import crypto
from providers_app.models import Credential

BATCH = 500

# (model, ciphertext field, how a row is named in an error message)
SECRETS = (
    (Credential, "ciphertext", lambda row: f"credential of account {row.account_id}"),
    (NotificationChannel, "target_ciphertext", lambda row: f"notification channel {row.name!r}"),
)


class Command(BaseCommand):
    help = (
        "Re-encrypt every credential and notification channel target with the first key of ENCRYPTION_KEY. "
        "Put the new key first (ENCRYPTION_KEY=new,old), run this, then drop the old key."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="check every secret decrypts; write nothing")

    def handle(self, *args, dry_run: bool, **options):
        keys = [k for k in settings.ENCRYPTION_KEY.split(",") if k.strip()]
        self.stdout.write(f"ENCRYPTION_KEY holds {len(keys)} key(s); secrets are re-encrypted with the first.")
        counts = {}
        # All or nothing: a secret no key can decrypt stops the rotation before anything is written,
        # so the old key is never dropped while some row still needs it.
        with transaction.atomic():
            for model, field, describe in SECRETS:
                rows = list(model.objects.select_for_update().order_by("pk"))
                undecryptable = []
                for row in rows:
                    try:
                        setattr(row, field, crypto.rotate(getattr(row, field)))
                    except InvalidToken:
                        undecryptable.append(describe(row))
                if undecryptable:
                    raise CommandError(
                        f"{len(undecryptable)} secret(s) cannot be decrypted with any key in ENCRYPTION_KEY "
                        f"(nothing was changed): {', '.join(undecryptable[:20])}"
                    )
                if not dry_run:
                    model.objects.bulk_update(rows, [field], batch_size=BATCH)
                counts[model._meta.verbose_name_plural] = len(rows)
            if dry_run:
                transaction.set_rollback(True)
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        for label, count in counts.items():
            self.stdout.write(self.style.SUCCESS(f"{verb} {count} {label}"))
        if not dry_run and len(keys) > 1:
            self.stdout.write("Every secret now decrypts with the first key alone; the older keys can be removed.")
