"""URL map: console, API v1, OpenAPI docs, metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from hotswap.apis import ApiRootApi
from hotswap.health import health, ready
from hotswap.observability.views import metrics

handler400 = "hotswap.exceptions.json_handler400"
handler404 = "hotswap.exceptions.json_handler404"
handler500 = "hotswap.exceptions.json_handler500"

api_v1 = [
    path("", ApiRootApi.as_view(), name="api-root"),
    path("", include("hotswap.accounts.urls")),
    path("", include("models_app.urls")),
    path("", include("devices.device_urls")),
    path("", include("devices.urls")),
    path("", include("rollouts.urls")),
]

urlpatterns = [
    path("health", health, name="health"),
    path("ready", ready, name="ready"),
    path("metrics", metrics, name="metrics"),
    path("admin/dashboard/", include("hotswap.dashboard.urls")),  # before admin/, whose <app_label>/ would take it
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]
