"""Upload → a real Celery worker validates in an isolated child → the report is in the API within seconds."""

import pytest

from models_app.models import ModelVersion
from tests.artifacts import onnx_model_bytes
from tests.e2e.test_worker_fleet_tasks import wait_for
from tests.live import celery_worker
from tests.models_app.conftest import upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_an_uploaded_model_is_validated_by_the_worker(client_for):
    developer = client_for("ModelDeveloper")
    with celery_worker() as (_process, log):
        response = upload(developer, onnx_model_bytes())
        assert response.status_code == 202
        model_id = response.json()["model_id"]

        validated = wait_for(lambda: ModelVersion.objects.get(model_id=model_id).status == "passed", timeout=60)
        worker_log = log.read_text()

    assert validated, worker_log[-3000:]
    report = developer.get(f"/api/v1/models/{model_id}/validation-report").json()
    assert report["status"] == "passed" and report["attempts"] == 1
    assert report["metrics"]["inferences"] >= 100
    assert {g["name"] for g in report["gates"]} >= {"max_latency_p99_ms", "min_throughput_ips", "max_memory_mb"}
