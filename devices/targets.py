"""Which devices a filter targets (region, type, tags, memory, explicit ids): used by desired-state and rollouts."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import QuerySet

from devices.models import Device


def devices_targeted(*, regions: Sequence[str] = (), device_types: Sequence[str] = (), tags: Sequence[str] = (),
                     device_ids: Sequence[str] = (), min_memory_mb: int | None = None,
                     include_offline: bool = True) -> QuerySet[Device]:
    """Devices matching every given criterion (lists match any of their values; tags must all be present).

    Decommissioned devices are never targeted.
    """
    queryset = Device.objects.exclude(status=Device.Status.DECOMMISSIONED)
    if regions:
        queryset = queryset.filter(region__in=regions)
    if device_types:
        queryset = queryset.filter(device_type__in=device_types)
    if tags:
        queryset = queryset.filter(tags__contains=list(tags))
    if device_ids:
        queryset = queryset.filter(device_id__in=device_ids)
    if min_memory_mb is not None:
        queryset = queryset.filter(memory_mb__gte=min_memory_mb)
    if not include_offline:
        queryset = queryset.filter(status=Device.Status.ACTIVE)
    return queryset.order_by("device_id")
