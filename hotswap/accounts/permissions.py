"""RolePermission: each view names the Django permission its operation needs; no name, no access."""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class RolePermission(BasePermission):
    """Grants access when the user holds `view.required_permission`.

    Roles are groups with permissions (hotswap.accounts.roles), so checks go through
    Django's `has_perm` and work the same in the API and in the admin. One view serves one
    operation (see hotswap.lib.routing), so one permission per view is enough.
    """

    message = "Your role does not allow this operation."

    def has_permission(self, request: Request, view) -> bool:
        if not hasattr(view, (request.method or "").lower()):
            return True  # let DRF answer 405 for methods the view does not have
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        permission = getattr(view, "required_permission", None)
        return permission is not None and user.has_perm(permission)
