"""Every API endpoint against every role and anonymous: allowed → 2xx, denied → 403, anonymous → 401."""

import tempfile

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from devices.models import ModelSlot
from devices.services.credentials import device_credential_issue
from devices.services.enrollment import enrollment_key_create
from devices.services.registry import device_register
from hotswap.accounts.roles import Role
from hotswap.accounts.services import api_token_create
from models_app import services
from models_app.models import ModelVersion
from models_app.storage import artifact_store
from models_app.uploads import PendingArtifact
from rollouts.models import Distribution, Stage
from rollouts.services import distribution_create
from tests.artifacts import onnx_model_bytes
from tests.devices.conftest import make_version  # noqa: F401 - fixture
from tests.models_app.conftest import send, start, upload, upload_test_set

pytestmark = pytest.mark.django_db

ADMIN, DEV, OPS, VIEW = Role.ADMIN, Role.MODEL_DEVELOPER, Role.OPERATOR, Role.VIEWER
EVERYONE = {ADMIN, DEV, OPS, VIEW}

# (method, path template, roles allowed). {model_id}/{name}/{version}/{token_id}/{device_id}/... are filled per test.
MATRIX = [
    ("GET", "/api/v1/models", EVERYONE),
    ("POST", "/api/v1/models", {ADMIN, DEV}),
    ("GET", "/api/v1/models/{model_id}", EVERYONE),
    ("DELETE", "/api/v1/models/{model_id}", {ADMIN}),
    ("GET", "/api/v1/models/{model_id}/download", {ADMIN, DEV, OPS}),
    ("GET", "/api/v1/models/{name}/versions", EVERYONE),
    ("GET", "/api/v1/models/{name}/versions/{version}", EVERYONE),
    ("POST", "/api/v1/models/{name}/versions/{version}/deprecate", {ADMIN, DEV}),
    ("POST", "/api/v1/models/{model_id}/validate", {ADMIN, DEV}),
    ("GET", "/api/v1/models/{model_id}/validation-report", EVERYONE),
    ("POST", "/api/v1/models/{model_id}/approve", {ADMIN}),
    ("GET", "/api/v1/models/{name}/test-sets", EVERYONE),
    ("POST", "/api/v1/models/{name}/test-sets", {ADMIN, DEV}),
    ("POST", "/api/v1/uploads", {ADMIN, DEV}),
    ("GET", "/api/v1/uploads/{upload_id}", {ADMIN, DEV}),
    ("DELETE", "/api/v1/uploads/{upload_id}", {ADMIN, DEV}),
    ("POST", "/api/v1/uploads/{upload_id}/parts", {ADMIN, DEV}),
    ("PUT", "/api/v1/uploads/{upload_id}/parts/{part}", {ADMIN, DEV}),
    ("POST", "/api/v1/uploads/{upload_id}/complete", {ADMIN, DEV}),
    ("PUT", "/api/v1/models/{name}/input-profiles", {ADMIN, DEV}),
    ("PUT", "/api/v1/models/{name}/output-tolerances", {ADMIN, DEV}),
    ("PUT", "/api/v1/models/{name}/versions/{version}/input-profiles", {ADMIN, DEV}),
    ("GET", "/api/v1/auth/me", EVERYONE),
    ("GET", "/api/v1/tokens", {ADMIN}),
    ("POST", "/api/v1/tokens", {ADMIN}),
    ("DELETE", "/api/v1/tokens/{token_id}", {ADMIN}),
    ("GET", "/api/v1/devices", EVERYONE),
    ("POST", "/api/v1/devices", {ADMIN, OPS}),
    ("GET", "/api/v1/devices/{device_id}", EVERYONE),
    ("PUT", "/api/v1/devices/{device_id}", {ADMIN, OPS}),
    ("DELETE", "/api/v1/devices/{device_id}", {ADMIN, OPS}),
    ("GET", "/api/v1/devices/{device_id}/metrics", EVERYONE),
    ("POST", "/api/v1/devices/{device_id}/credentials", {ADMIN, OPS}),
    ("DELETE", "/api/v1/devices/{device_id}/credentials/{credential_id}", {ADMIN, OPS}),
    ("PUT", "/api/v1/devices/{device_id}/desired", {ADMIN, OPS}),
    ("POST", "/api/v1/devices/desired", {ADMIN, OPS}),
    ("POST", "/api/v1/devices/{device_id}/desired/remove", {ADMIN, OPS}),
    ("POST", "/api/v1/devices/desired/remove", {ADMIN, OPS}),
    ("GET", "/api/v1/enrollment-keys", {ADMIN}),
    ("POST", "/api/v1/enrollment-keys", {ADMIN}),
    ("DELETE", "/api/v1/enrollment-keys/{key_id}", {ADMIN}),
    ("GET", "/api/v1/distributions", EVERYONE),
    ("POST", "/api/v1/distributions", {ADMIN, OPS}),
    ("GET", "/api/v1/distributions/{distribution_id}", EVERYONE),
    ("GET", "/api/v1/distributions/{distribution_id}/status", EVERYONE),
    ("GET", "/api/v1/distributions/{distribution_id}/metrics", EVERYONE),
    ("GET", "/api/v1/distributions/{distribution_id}/transitions", EVERYONE),
    ("POST", "/api/v1/distributions/{distribution_id}/approve", {ADMIN, OPS}),
    ("POST", "/api/v1/distributions/{distribution_id}/pause", {ADMIN, OPS}),
    ("POST", "/api/v1/distributions/{distribution_id}/resume", {ADMIN, OPS}),
    ("POST", "/api/v1/distributions/{distribution_id}/abort", {ADMIN, OPS}),
    ("POST", "/api/v1/distributions/{distribution_id}/rollback", {ADMIN, OPS}),
    ("POST", "/api/v1/models/{rollout_model}/versions/{rollout_old}/rollback", {ADMIN, OPS}),
]
# Endpoints that identify the caller some other way (credentials in the body, a signed link).
# Devices authenticate with their own credential (check-in) or an enrollment key in the body (enroll).
NOT_ROLE_BASED = {"/api/v1/auth/token", "/api/v1/auth/token/refresh", "/api/v1/artifacts/<str:token>",
                  "/api/v1/devices/enroll", "/api/v1/devices/checkin", "/api/v1/devices/manifest-key",
                  "/api/v1/"}  # the API root: links only, open to everyone


def _rollout_fixtures(make) -> dict:
    """A distribution waiting at a manual gate (so every action applies), and a device to roll back."""
    old, new = make(name="matrix-rollout", version="1.0.0"), make(name="matrix-rollout", version="1.1.0")
    device_register(device_id="matrix-rollout-device")
    later = device_register(device_id="matrix-rollout-later")
    ModelSlot.objects.create(device=later, ai_model=new.ai_model, running_version=new, reported_version=new.version)
    distribution = distribution_create(version=new, strategy="direct", target={"device_ids": ["matrix-rollout-device"]})
    Distribution.objects.filter(pk=distribution.pk).update(status=Distribution.Status.RUNNING)
    Stage.objects.filter(distribution=distribution).update(status=Stage.Status.AWAITING_APPROVAL)
    return {"distribution_id": distribution.pk, "rollout_model": "matrix-rollout", "rollout_old": old.version}


@pytest.fixture
def fixtures(make_user, make_version):  # noqa: F811
    owner = make_user(ADMIN)
    artifact = PendingArtifact.receive(artifact_store(), [onnx_model_bytes()], filename="m.onnx", max_bytes=10**9)
    version, _ = services.model_version_upload(artifact=artifact, name="matrix", version="1.0.0", framework="onnx",
                                               uploaded_by=owner)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)  # so it can be approved
    token, _key = api_token_create(user=owner, name="ci", created_by=owner)
    device = device_register(device_id="matrix-device", region="eu-west")
    credential, _raw = device_credential_issue(device=device)
    enrollment_key, _raw = enrollment_key_create(name="matrix", created_by=owner)
    return {"model_id": version.model_id, "name": "matrix", "version": "1.0.0", "token_id": token.pk,
            "device_id": device.device_id, "credential_id": credential.pk, "key_id": enrollment_key.pk,
            "upload_id": "{upload_id}", "part": 1,  # sessions are the caller's own: made per request
            **_rollout_fixtures(make_version)}


def _session_request(client: APIClient, method: str, path: str):
    """Upload sessions belong to their caller: start one as this client, then make the request on it."""
    content = onnx_model_bytes(hidden=6)
    started = start(client, content, name="matrix-session")
    if started.status_code >= 300 or path == "/api/v1/uploads":
        return started
    session = started.json()
    path = path.replace("{upload_id}", session["id"])
    if path.endswith("/parts"):
        return client.post(path, {"numbers": [1]}, format="json")
    if path.endswith("/parts/1"):
        return client.put(path, data=content, content_type="application/octet-stream")
    if path.endswith("/complete"):
        send(client, session, content, [1])
    return getattr(client, method.lower())(path)


def _request(client: APIClient, method: str, path: str):
    if path.endswith("/parts/1"):  # parts go through the API only on local storage
        with tempfile.TemporaryDirectory() as root, override_settings(STORAGES={**settings.STORAGES, "artifacts": {
                "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": root}}}):
            return _session_request(client, method, path)
    if path.startswith("/api/v1/uploads"):
        return _session_request(client, method, path)
    if method == "POST" and path == "/api/v1/models":
        return upload(client, onnx_model_bytes(hidden=5), name="matrix-upload")
    if method == "POST" and path.endswith("/test-sets"):
        return upload_test_set(client, "matrix")
    if method == "POST" and path == "/api/v1/tokens":
        return client.post(path, {"name": "another"}, format="json")
    if method == "POST" and path.endswith("/resume"):  # the fixture's distribution runs; resuming needs a pause
        Distribution.objects.filter(status=Distribution.Status.RUNNING).update(status=Distribution.Status.PAUSED)
    bodies = {
        ("POST", "/api/v1/devices"): {"device_id": "matrix-new", "region": "eu-west"},
        ("PUT", "/api/v1/devices/matrix-device"): {"name": "Renamed"},
        ("POST", "/api/v1/devices/matrix-device/credentials"): {},
        ("PUT", "/api/v1/devices/matrix-device/desired"): {"version": "matrix-rollout-1.0.0"},
        ("POST", "/api/v1/devices/desired"): {"version": "matrix-rollout-1.0.0", "device_ids": ["matrix-device"]},
        ("POST", "/api/v1/devices/matrix-device/desired/remove"): {"model": "matrix"},
        ("POST", "/api/v1/devices/desired/remove"): {"model": "matrix", "device_ids": ["matrix-device"]},
        ("POST", "/api/v1/enrollment-keys"): {"name": "another"},
        ("POST", "/api/v1/models/matrix-1.0.0/approve"): {"reason": "Risk accepted for the matrix test."},
        ("POST", "/api/v1/models/matrix-1.0.0/validate"): {},
        ("PUT", "/api/v1/models/matrix/input-profiles"): {"input_profiles": []},
        ("PUT", "/api/v1/models/matrix/output-tolerances"): {"output_tolerances": {}},
        ("PUT", "/api/v1/models/matrix/versions/1.0.0/input-profiles"): {"input_profiles": []},
        ("POST", "/api/v1/distributions"): {"version": "matrix-rollout-1.1.0",
                                            "target": {"device_ids": ["matrix-device"]}},
    }
    if (method, path) in bodies:
        return getattr(client, method.lower())(path, bodies[method, path], format="json")
    return getattr(client, method.lower())(path)


CASES = [(m, p, role, role in allowed) for m, p, allowed in MATRIX for role in [*sorted(EVERYONE), None]]


@pytest.mark.parametrize(("method", "template", "role", "allowed"), CASES,
                         ids=[f"{m} {p} as {r or 'anonymous'}" for m, p, r, _ in CASES])
def test_it_enforces_roles(make_user, fixtures, method, template, role, allowed):
    client = APIClient()
    if role:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(make_user(role))}")

    response = _request(client, method, template.format(**fixtures))

    if role is None:
        assert response.status_code == 401, response.content
        assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    elif allowed:
        assert 200 <= response.status_code < 300, response.content
    else:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "PERMISSION_DENIED"


def _api_routes(resolver=None, prefix: str = "") -> set[str]:
    routes: set[str] = set()
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            routes |= _api_routes(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            routes.add("/" + prefix + str(entry.pattern))
    return {r for r in routes if r.startswith("/api/v1/")}


def test_the_matrix_covers_every_api_route():
    placeholders = {"{upload_id}": "<uuid:session_id>", "{part}": "<int:number>",
                    "{model_id}": "<str:model_id>", "{name}": "<str:name>", "{version}": "<str:version>",
                    "{token_id}": "<int:token_id>", "{device_id}": "<str:device_id>",
                    "{credential_id}": "<int:credential_id>", "{key_id}": "<int:key_id>",
                    "{distribution_id}": "<int:distribution_id>", "{rollout_model}": "<str:name>",
                    "{rollout_old}": "<str:version>"}
    covered = set()
    for _method, template, _roles in MATRIX:
        for placeholder, converter in placeholders.items():
            template = template.replace(placeholder, converter)
        covered.add(template)

    assert _api_routes() - NOT_ROLE_BASED == covered
