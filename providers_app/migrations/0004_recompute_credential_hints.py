"""Hints stored before this migration showed the last 4 characters of the secret itself (e.g. of an AWS secret
access key): recompute every hint from the decrypted secret with credential_hints.credential_hint, which names
the credential without any part of it. A credential the configured keys cannot decrypt gets an empty hint
rather than keeping the old one."""

import json

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations

from finops import crypto
from providers_app.credential_hints import credential_hint


def recompute_hints(apps, schema_editor):
    Credential = apps.get_model("providers_app", "Credential")
    for credential in Credential.objects.all().only("pk", "ciphertext", "hint").iterator():
        try:
            text = crypto.decrypt(credential.ciphertext)
        except ImproperlyConfigured:
            hint = ""
        else:
            try:
                secret = json.loads(text)
            except ValueError:
                secret = text
            hint = credential_hint(secret if isinstance(secret, dict) else text)
        if hint != credential.hint:
            Credential.objects.filter(pk=credential.pk).update(hint=hint)


def blank_hints(apps, schema_editor):
    # The old hints held part of the secret: going back does not bring them back.
    apps.get_model("providers_app", "Credential").objects.update(hint="")


class Migration(migrations.Migration):
    dependencies = [("providers_app", "0003_credential_ciphertext_field_and_hint_length")]

    operations = [migrations.RunPython(recompute_hints, blank_hints)]
