"""API permission classes shared by the apps: Django model permissions for reads too, and the platform-admin role.

Object scope (which team's rows) is not decided here but in the selectors each viewset's get_queryset calls
(providers_app.selectors): an id outside the user's scope is simply not found (404).
"""

from rest_framework.permissions import BasePermission, DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    """DRF's DjangoModelPermissions, with `view_<model>` required for GET/HEAD/OPTIONS as well."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }


class IsPlatformAdmin(BasePermission):
    message = "Only platform admins may do this (providers_app.platform_admin)."

    def has_permission(self, request, view) -> bool:
        from providers_app.selectors import is_platform_admin

        return is_platform_admin(request.user)


class HasModelPermission(BasePermission):
    """`HasModelPermission.of("costs_app.view_costlineitem")`: one named permission, whatever the method."""

    permission = ""
    message = "You lack the permission for this."

    @classmethod
    def of(cls, permission: str) -> type["HasModelPermission"]:
        return type(
            f"Has_{permission.replace('.', '_')}",
            (cls,),
            {"permission": permission, "message": f"You need the {permission} permission."},
        )

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(self.permission))
