"""Slack and webhook target hints stored before this migration showed the URL's last 4 characters (part of its
token): recompute them as scheme and host only (crypto.url_hint). E-mail hints (the addresses) are unchanged.
A target the configured keys cannot decrypt gets an empty hint rather than keeping the old one."""

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations

from finops import crypto


def recompute_hints(apps, schema_editor):
    NotificationChannel = apps.get_model("costs_app", "NotificationChannel")
    for channel in NotificationChannel.objects.exclude(kind="email").only("pk", "target_ciphertext", "target_hint"):
        try:
            hint = crypto.url_hint(crypto.decrypt(channel.target_ciphertext))
        except ImproperlyConfigured:
            hint = ""
        if hint != channel.target_hint:
            NotificationChannel.objects.filter(pk=channel.pk).update(target_hint=hint)


def blank_hints(apps, schema_editor):
    apps.get_model("costs_app", "NotificationChannel").objects.exclude(kind="email").update(target_hint="")


class Migration(migrations.Migration):
    dependencies = [("costs_app", "0011_channel_ciphertext_fields")]

    operations = [migrations.RunPython(recompute_hints, blank_hints)]
