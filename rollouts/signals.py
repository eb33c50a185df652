"""Hooks into other apps: a version a distribution shipped (or restores) cannot be deleted."""

from django.db.models import Q

from models_app.services import register_version_in_use_check
from rollouts.models import Assignment, Distribution


@register_version_in_use_check
def version_in_distributions(version) -> str | None:
    shipped = list(Distribution.objects.filter(Q(version=version) | Q(version_b=version) | Q(winner=version))
                   .order_by("pk").values_list("pk", flat=True)[:5])
    restores = Assignment.objects.filter(previous_version=version).values_list("distribution_id", flat=True)
    ids = sorted(set(shipped) | set(restores.order_by().distinct()[:5]))
    if ids:
        listed = ", ".join(f"#{pk}" for pk in ids[:5])
        return f"in the history of distribution(s) {listed} (deprecate it instead)"
    return None
