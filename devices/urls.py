"""Registry, enrollment and credential routes (people and CI); `devices/enroll` before `devices/<device_id>`."""

from django.urls import path

from devices import apis
from hotswap.lib.routing import method_router

urlpatterns = [
    path("devices", method_router("Devices", get=apis.DeviceListApi, post=apis.DeviceCreateApi),
         name="device-collection"),
    path("devices/enroll", apis.DeviceEnrollApi.as_view(), name="device-enroll"),
    path("devices/<str:device_id>",
         method_router("Device", get=apis.DeviceGetApi, put=apis.DeviceUpdateApi, delete=apis.DeviceDecommissionApi),
         name="device-detail"),
    path("devices/<str:device_id>/metrics", apis.DeviceMetricsApi.as_view(), name="device-metrics"),
    path("devices/<str:device_id>/credentials", apis.DeviceCredentialIssueApi.as_view(), name="device-credentials"),
    path("devices/<str:device_id>/credentials/<int:credential_id>", apis.DeviceCredentialRevokeApi.as_view(),
         name="device-credential-revoke"),
    path("enrollment-keys",
         method_router("EnrollmentKeys", get=apis.EnrollmentKeyListApi, post=apis.EnrollmentKeyCreateApi),
         name="enrollment-keys"),
    path("enrollment-keys/<int:key_id>", apis.EnrollmentKeyRevokeApi.as_view(), name="enrollment-key-revoke"),
]
