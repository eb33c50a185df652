"""Device-facing routes (check-in, manifest key) and desired-state routes; before the registry's `<device_id>`."""

from django.urls import path

from devices import desired_apis, device_api

urlpatterns = [
    path("devices/checkin", device_api.device_checkin, name="device-checkin"),
    path("devices/manifest-key", device_api.manifest_public_key, name="device-manifest-key"),
    path("devices/desired", desired_apis.DevicesDesiredSetApi.as_view(), name="devices-desired"),
    path("devices/desired/remove", desired_apis.DevicesModelRemoveApi.as_view(), name="devices-model-remove"),
    path("devices/<str:device_id>/desired", desired_apis.DeviceDesiredSetApi.as_view(), name="device-desired"),
    path("devices/<str:device_id>/desired/remove", desired_apis.DeviceModelRemoveApi.as_view(),
         name="device-model-remove"),
]
