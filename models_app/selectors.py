"""Reads from the model registry."""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError

from hotswap.exceptions import NotFoundError
from models_app.models import AIModel, Framework, ModelVersion


class ModelVersionFilter(django_filters.FilterSet):
    """Filters for the version list: name, framework, status, tag, format."""

    name = django_filters.CharFilter(field_name="ai_model__name")
    name_contains = django_filters.CharFilter(field_name="ai_model__name", lookup_expr="icontains")
    framework = django_filters.ChoiceFilter(field_name="ai_model__framework", choices=Framework.choices)
    status = django_filters.MultipleChoiceFilter(choices=ModelVersion.Status.choices)
    tag = django_filters.CharFilter(method="filter_tag")
    detected_format = django_filters.CharFilter()

    class Meta:
        model = ModelVersion
        fields = ["name", "framework", "status", "tag", "detected_format"]

    def filter_tag(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(ai_model__tags__contains=[value])


def model_version_list(*, filters: dict | None = None) -> QuerySet[ModelVersion]:
    queryset = ModelVersion.objects.select_related("ai_model", "uploaded_by")
    filterset = ModelVersionFilter(filters or {}, queryset=queryset)
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    return filterset.qs


def model_version_get(*, model_id: str) -> ModelVersion:
    version = ModelVersion.objects.select_related("ai_model", "uploaded_by").filter(model_id=model_id).first()
    if version is None:
        raise NotFoundError(f"Model version '{model_id}' does not exist.", code="MODEL_NOT_FOUND")
    return version


def model_version_get_by_name(*, name: str, version: str) -> ModelVersion:
    return model_version_get(model_id=f"{name}-{version}")


def model_versions_of(*, name: str) -> QuerySet[ModelVersion]:
    if not AIModel.objects.filter(name=name).exists():
        raise NotFoundError(f"Model '{name}' does not exist.", code="MODEL_NOT_FOUND")
    return ModelVersion.objects.select_related("ai_model", "uploaded_by").filter(ai_model__name=name)
