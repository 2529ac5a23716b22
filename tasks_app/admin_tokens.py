"""The JWT blacklist's admin (simplejwt's token_blacklist app) without the token itself.

simplejwt's OutstandingTokenAdmin shows every field, the encoded refresh token included: anyone allowed to view the
page could copy another user's refresh token and use it. Ours shows its id (jti), user and times only.
"""

from django.contrib import admin
from rest_framework_simplejwt.token_blacklist import admin as token_admin
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

SHOWN = ("jti", "user", "created_at", "expires_at")


class OutstandingTokenAdmin(token_admin.OutstandingTokenAdmin):
    fields = SHOWN

    def get_readonly_fields(self, *args, **kwargs):
        return SHOWN


if admin.site.is_registered(OutstandingToken):
    admin.site.unregister(OutstandingToken)
admin.site.register(OutstandingToken, OutstandingTokenAdmin)
