"""Dashboard routes, under /admin/dashboard/: behind the console's login like every admin page."""

from django.contrib import admin
from django.urls import path

from hotswap.dashboard import views

urlpatterns = [
    path("", admin.site.admin_view(views.dashboard), name="dashboard"),
    path("distributions/<int:distribution_id>/charts/", admin.site.admin_view(views.distribution_charts_fragment),
         name="dashboard-distribution-charts"),
]
