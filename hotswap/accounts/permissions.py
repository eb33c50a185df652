"""RolePermission: each view names the Django permission an operation needs; no name, no access."""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class RolePermission(BasePermission):
    """Grants access when the user holds `view.required_permissions[method]` (or `view.required_permission`).

    Roles are groups with permissions (hotswap.accounts.roles), so checks go through
    Django's `has_perm` and work the same in the API and in the admin.
    """

    message = "Your role does not allow this operation."

    def has_permission(self, request: Request, view) -> bool:
        if not hasattr(view, (request.method or "").lower()):
            return True  # let DRF answer 405 for methods the view does not have
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        perm = required_permission(view, request.method or "GET")
        return perm is not None and user.has_perm(perm)


def required_permission(view, method: str) -> str | None:
    by_method = getattr(view, "required_permissions", None)
    if by_method is not None:
        method = method.upper()
        return by_method.get(method) or (by_method.get("GET") if method in ("HEAD", "OPTIONS") else None)
    return getattr(view, "required_permission", None)
