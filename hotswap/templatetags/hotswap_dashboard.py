"""Template tags of the dashboard: a distribution's charts on its console page."""

from django import template
from django.utils import timezone

from hotswap.dashboard.views import charts_context

register = template.Library()


@register.simple_tag
def distribution_telemetry(distribution) -> dict:
    """`{% distribution_telemetry distribution as telemetry %}`: its charts, the URL and pace of their redraw.

    A tag rather than a line in the rollouts console's view: the page's charts belong to the dashboard.
    """
    return charts_context(distribution, now=timezone.now())
