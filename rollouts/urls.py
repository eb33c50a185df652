"""Distribution routes, and the model rollback (a distribution) under the registry's version path."""

from django.urls import path

from hotswap.lib.routing import method_router
from rollouts import apis

urlpatterns = [
    path("distributions",
         method_router("Distributions", get=apis.DistributionListApi, post=apis.DistributionCreateApi),
         name="distribution-collection"),
    path("distributions/<int:distribution_id>", apis.DistributionGetApi.as_view(), name="distribution-detail"),
    path("distributions/<int:distribution_id>/status", apis.DistributionStatusApi.as_view(),
         name="distribution-status"),
    path("distributions/<int:distribution_id>/metrics", apis.DistributionMetricsApi.as_view(),
         name="distribution-metrics"),
    path("distributions/<int:distribution_id>/transitions", apis.DistributionTransitionListApi.as_view(),
         name="distribution-transitions"),
    path("distributions/<int:distribution_id>/approve", apis.DistributionApproveApi.as_view(),
         name="distribution-approve"),
    path("distributions/<int:distribution_id>/pause", apis.DistributionPauseApi.as_view(), name="distribution-pause"),
    path("distributions/<int:distribution_id>/resume", apis.DistributionResumeApi.as_view(),
         name="distribution-resume"),
    path("distributions/<int:distribution_id>/abort", apis.DistributionAbortApi.as_view(), name="distribution-abort"),
    path("distributions/<int:distribution_id>/rollback", apis.DistributionRollbackApi.as_view(),
         name="distribution-rollback"),
    path("models/<str:name>/versions/<str:version>/rollback", apis.ModelVersionRollbackApi.as_view(),
         name="model-version-rollback"),
]
