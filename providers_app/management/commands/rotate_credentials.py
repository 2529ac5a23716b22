"""`manage.py rotate_credentials`: re-encrypt every stored secret with the first key of ENCRYPTION_KEY.

"Every" is `finops.crypto.encrypted_fields()`: each model field of type EncryptedTextField (credentials, channel
targets, webhook signing secrets, and whatever is declared with that type later), so a new ciphertext column
cannot be forgotten here.
"""

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from finops import crypto

BATCH = 500


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (every EncryptedTextField: credentials, notification channel targets and "
        "signing secrets, ...) with the first key of ENCRYPTION_KEY. "
        "Put the new key first (ENCRYPTION_KEY=new,old), run this, then drop the old key."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="check every secret decrypts; write nothing")

    def handle(self, *args, dry_run: bool, **options):
        try:
            keys = crypto.parse_keys(settings.ENCRYPTION_KEY)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc))
        self.stdout.write(f"ENCRYPTION_KEY holds {len(keys)} key(s); secrets are re-encrypted with the first.")
        by_model: dict = {}
        for model, field in crypto.encrypted_fields():
            by_model.setdefault(model, []).append(field.name)
        report = []
        # All or nothing: a secret no key can decrypt stops the rotation before anything is written,
        # so the old key is never dropped while some row still needs it.
        with transaction.atomic():
            for model, fields in by_model.items():
                rows = list(model.objects.select_for_update().order_by("pk").only("pk", *fields))
                undecryptable = []
                per_field = dict.fromkeys(fields, 0)
                for row in rows:
                    for name in fields:
                        value = getattr(row, name)
                        if not value:  # a blank optional secret (e.g. a channel without its own signing key)
                            continue
                        try:
                            setattr(row, name, crypto.rotate(value))
                        except InvalidToken:
                            undecryptable.append(f"{model._meta.verbose_name} {row.pk} ({name})")
                        else:
                            per_field[name] += 1
                if undecryptable:
                    raise CommandError(
                        f"{len(undecryptable)} secret(s) cannot be decrypted with any key in ENCRYPTION_KEY "
                        f"(nothing was changed): {', '.join(undecryptable[:20])}"
                    )
                if not dry_run:
                    model.objects.bulk_update(rows, fields, batch_size=BATCH)
                detail = ", ".join(f"{name}: {count}" for name, count in per_field.items())
                report.append(f"{len(rows)} {model._meta.verbose_name_plural} ({detail})")
            if dry_run:
                transaction.set_rollback(True)
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        for line in report:
            self.stdout.write(self.style.SUCCESS(f"{verb} {line}"))
        if not dry_run and len(keys) > 1:
            self.stdout.write("Every secret now decrypts with the first key alone; the older keys can be removed.")
