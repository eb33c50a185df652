"""Shared console pieces."""

from django.contrib import admin


class ReadOnlyTabularInline(admin.TabularInline):
    """An inline that only shows rows: changes go through services (upload form, actions, API)."""

    extra = 0
    can_delete = False
    show_change_link = True

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False
