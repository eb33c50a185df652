"""Admin for API tokens (created and revoked through the services) and users with their roles."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from hotswap.accounts.models import ApiToken
from hotswap.accounts.roles import Role
from hotswap.accounts.services import api_token_create, api_token_expiry_validate, api_token_revoke

User = get_user_model()

ADD_FIELDS = ("user", "name", "expires_at")
# key_hash is deliberately absent: it is never shown anywhere.
DETAIL_FIELDS = ("user", "name", "prefix", "created_at", "created_by", "last_used_at", "expires_at",
                 "revoked_at", "revoked_by")


class ApiTokenAddForm(forms.ModelForm):
    """The three things a person chooses; the key itself is made by api_token_create."""

    class Meta:
        model = ApiToken
        fields = ADD_FIELDS

    def clean(self) -> dict:
        cleaned = super().clean()
        try:
            api_token_expiry_validate(cleaned.get("expires_at"))
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are immutable once made: create (key shown once), view, revoke."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__username")
    ordering = ("-created_at",)
    raw_id_fields = ("user",)
    actions = ["revoke_selected"]

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        return ADD_FIELDS if obj is None else DETAIL_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        return () if obj is None else DETAIL_FIELDS

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # An existing token's page is view-only; revocation is the only change, via the action.
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        if change:
            return
        token, key = api_token_create(user=form.cleaned_data["user"], name=form.cleaned_data["name"],
                                      created_by=request.user, expires_at=form.cleaned_data["expires_at"])
        # The admin goes on to log and redirect with `obj`: make it the row the service wrote.
        for field in ApiToken._meta.concrete_fields:
            setattr(obj, field.attname, getattr(token, field.attname))
        obj._state.adding = False
        obj._state.db = token._state.db
        self.message_user(
            request,
            f"The key of API token “{token.name}” is shown only this once; copy it now: {key}",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = 0
        for token in queryset:
            was_active = token.revoked_at is None
            api_token_revoke(token=token, revoked_by=request.user)
            revoked += was_active
        self.message_user(request, f"Revoked {revoked} token(s); {queryset.count() - revoked} already revoked.",
                          messages.SUCCESS)


admin.site.unregister(User)


@admin.register(User)
class RoleUserAdmin(UserAdmin):
    """The stock user admin with each user's role in the list."""

    list_display = (*UserAdmin.list_display, "role")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Role")
    def role(self, user) -> str:
        # Reads the prefetched groups: no query per row.
        return ", ".join(sorted(g.name for g in user.groups.all() if g.name in Role.values)) or "—"
