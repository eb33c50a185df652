"""OpenTelemetry traces: one rollout from upload to the device's swap as one span tree, across every hop."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from opentelemetry import trace

from devices.models import InstallReport
from devices.services.enrollment import enrollment_key_create
from hotswap.celery import app as celery_app
from hotswap.observability import tracing
from hotswap_device import Agent
from hotswap_device import tracing as agent_tracing
from models_app.models import ModelVersion
from rollouts import orchestrator
from rollouts.models import Distribution
from rollouts.services import distribution_create
from tests.artifacts import onnx_model_bytes
from tests.e2e.test_worker_fleet_tasks import wait_for
from tests.live import celery_worker, gunicorn_server
from tests.models_app.conftest import upload
from tests.spans import is_child, links_to, named, one, recording, traceparent_of

# The CI pipeline's span the upload request continues (`traceparent` request header).
CI_TRACE, CI_SPAN = secrets.token_hex(16), secrets.token_hex(8)
CI_TRACEPARENT = f"00-{CI_TRACE}-{CI_SPAN}-01"


@pytest.fixture
def spans():
    """Every span of this process (server code and the in-process agent) goes to an in-memory exporter."""
    with recording(tracing.install, agent_tracing.use_provider) as exporter:
        yield exporter


@pytest.fixture
def eager_tasks():
    """Tasks run in the publishing process, in its context (the real broker hop has its own test)."""
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_rollout_is_one_span_tree_from_the_upload_to_the_devices_swap(spans, eager_tasks, client_for, tmp_path):
    _key, enroll_key = enrollment_key_create(name="traced", created_by=None)
    with gunicorn_server() as (url, _process):
        agent = Agent(url, tmp_path / "agent", enroll_key=enroll_key, device_id="traced-1", grace_seconds=0.05,
                      warmup_runs=1)
        try:
            assert agent.run_once().action == "none"  # enrolled; nothing desired yet

            # API request (continuing CI's trace) → model.upload → the validation task → model.validate
            response = client_for("ModelDeveloper").post("/api/v1/models", {
                "name": "resnet", "version": "1.0.0", "framework": "onnx",
                "sha256": hashlib.sha256(onnx_model_bytes()).hexdigest(),
                "artifact": SimpleUploadedFile("model.onnx", onnx_model_bytes())},
                format="multipart", headers={"traceparent": CI_TRACEPARENT})
            assert response.status_code == 202, response.content
            version = ModelVersion.objects.get(model_id=response.json()["model_id"])
            assert version.status == ModelVersion.Status.PASSED

            distribution = distribution_create(version=version, strategy="direct", config={"soak": "PT0S"},
                                               target={"device_ids": ["traced-1"]})
            distribution.refresh_from_db()
            assert distribution.status == Distribution.Status.RUNNING  # advanced at commit: offered

            result = agent.run_once()  # check-in answer (traceparent) → download, verify, load, swap → report
            assert (result.action, result.version) == ("installed", "1.0.0")
            orchestrator.distribution_advance(distribution_id=distribution.pk)  # takes the report: device.update
        finally:
            agent.close()

    upload_span, validate = one(spans, "model.upload"), one(spans, "model.validate")
    create, swap, update = one(spans, "distribution.create"), one(spans, "model.swap"), one(spans, "device.update")

    # The version's trace: CI's request → model.upload → model.validate.
    assert upload_span.context.trace_id == int(CI_TRACE, 16) and upload_span.parent.span_id == int(CI_SPAN, 16)
    assert is_child(validate, upload_span)
    assert version.traceparent == traceparent_of(upload_span)
    assert upload_span.attributes["model.id"] == validate.attributes["model.id"] == "resnet-1.0.0"
    assert (upload_span.attributes["model.version"], upload_span.attributes["artifact.size"]) == (
        "1.0.0", version.size_bytes)
    assert validate.attributes["validation.outcome"] == "passed"

    # The rollout's trace: its context is the distribution's traceparent, handed to the device.
    assert create.parent is None and links_to(create, upload_span)
    distribution.refresh_from_db()
    assert distribution.traceparent == traceparent_of(create)
    assert create.attributes["distribution.id"] == distribution.pk
    assert (create.attributes["model.id"], create.attributes["distribution.strategy"]) == ("resnet-1.0.0", "direct")
    executes = named(spans, "distribution.execute")
    assert executes and all(is_child(step, create) for step in executes)
    assert executes[0].attributes["distribution.status_before"] == "scheduled"
    assert any(step.attributes["distribution.reports_followed"] for step in executes)

    # The agent: model.swap continues the check-in answer's traceparent; download, verify and load are its steps.
    assert is_child(swap, create)
    assert (swap.attributes["device.id"], swap.attributes["model.id"]) == ("traced-1", "resnet-1.0.0")
    assert swap.attributes["install.outcome"] == "installed"
    for step in ("model.download", "model.verify", "model.load"):
        assert is_child(one(spans, step), swap), step
    report = InstallReport.objects.get(device__device_id="traced-1", status="active")
    assert report.traceparent == traceparent_of(swap)  # the report carries the swap's own context

    # The server takes the report: device.update, in the rollout's trace, linked to the swap it reports.
    assert is_child(update, create) and links_to(update, swap)
    assert update.attributes["device.id"] == "traced-1" and update.attributes["model.id"] == "resnet-1.0.0"
    assert update.attributes["distribution.id"] == distribution.pk
    assert (update.attributes["install.status"], update.attributes["install.evidence"]) == ("active", "report")
    assert update.start_time <= swap.start_time and update.end_time >= swap.end_time  # offer → report

    # Nothing secret in any attribute: no credential, enrollment key or signed download URL.
    credential = agent.store.credential
    for span in spans.get_finished_spans():
        for value in span.attributes.values():
            text = str(value)
            assert enroll_key not in text and credential not in text and "Signature" not in text, (span.name, text)

    # An idle tick records nothing: distribution.execute is only for steps that changed something.
    spans.clear()
    orchestrator.distribution_advance(distribution_id=distribution.pk)
    assert spans.get_finished_spans() == ()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_celery_message_carries_the_trace_to_the_worker_which_prints_it_with_the_console_exporter(
        spans, client_for):
    with celery_worker(env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "hotswap-worker"}) as (
            _process, log):
        response = upload(client_for("ModelDeveloper"), onnx_model_bytes())
        assert response.status_code == 202
        model_id = response.json()["model_id"]
        assert wait_for(lambda: ModelVersion.objects.get(model_id=model_id).status == "passed", timeout=60), (
            log.read_text()[-3000:])
        assert wait_for(lambda: '"model.validate"' in log.read_text(), timeout=10)
        lines = log.read_text().splitlines()

    printed = [json.loads(line) for line in lines if line.startswith("{") and '"name": "model.validate"' in line]
    assert len(printed) == 1, lines[-20:]
    validate, upload_span = printed[0], one(spans, "model.upload")
    assert validate["context"]["trace_id"] == f"0x{upload_span.context.trace_id:032x}"
    assert validate["parent_id"] == f"0x{upload_span.context.span_id:016x}"
    assert validate["attributes"]["model.id"] == model_id
    assert validate["resource"]["attributes"]["service.name"] == "hotswap-worker"


def test_the_console_exporter_prints_one_json_line_per_span():
    out = io.StringIO()
    provider = agent_tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "console"}, service_name="hotswap", out=out)
    previous = tracing.install(provider)
    try:
        with tracing.span("model.upload", attributes={"model.id": "resnet-1.0.0", "skipped": None}), \
                tracing.span("model.validate"):
            pass
    finally:
        tracing.install(previous)
        provider.shutdown()

    validate, upload_span = (json.loads(line) for line in out.getvalue().splitlines())
    assert (upload_span["name"], validate["name"]) == ("model.upload", "model.validate")
    assert validate["parent_id"] == upload_span["context"]["span_id"]
    assert upload_span["attributes"] == {"model.id": "resnet-1.0.0"}
    assert upload_span["resource"]["attributes"]["service.name"] == "hotswap"


@pytest.mark.parametrize(("value", "exporters"), [
    ("", []), ("none", []), ("console", ["console"]), ("otlp", ["otlp"]), ("Console, otlp", ["console", "otlp"]),
])
def test_the_exporter_is_chosen_by_the_environment(value, exporters):
    assert agent_tracing.exporter_names({"OTEL_TRACES_EXPORTER": value}) == exporters
    provider = agent_tracing.provider_from_env({"OTEL_TRACES_EXPORTER": value}, service_name="hotswap")
    assert (provider is None) == (not exporters)
    if provider is not None:
        provider.shutdown()


def test_an_unknown_exporter_fails_loudly_at_start_up():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="unknown exporter jaeger"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "jaeger"})


@pytest.mark.django_db
def test_without_an_exporter_nothing_is_recorded_or_propagated(make_device, make_version):
    assert agent_tracing.provider_from_env({}, service_name="hotswap") is None  # none is the default
    previous = tracing.install(None)
    try:
        assert not tracing.enabled()
        with tracing.span("model.upload", attributes={"model.id": "resnet-1.0.0"}) as current:
            assert current is trace.INVALID_SPAN and trace.get_current_span() is trace.INVALID_SPAN
            assert tracing.traceparent() == ""
        headers: dict = {}
        tracing._inject(headers=headers)
        assert headers == {}  # task messages carry nothing

        make_device(device_id="untraced-1")
        distribution = distribution_create(version=make_version(), strategy="direct",
                                           target={"device_ids": ["untraced-1"]})
        # Devices still get a traceparent to report with (random: a trace nobody records).
        assert distribution.traceparent.startswith("00-") and len(distribution.traceparent) == 55
    finally:
        tracing.install(previous)


def test_the_agent_without_tracing_hands_the_servers_traceparent_back():
    previous = agent_tracing.use_provider(None)
    try:
        with agent_tracing.span("model.swap", traceparent=CI_TRACEPARENT) as current:
            assert current is None
            assert agent_tracing.traceparent_of(current, CI_TRACEPARENT) == CI_TRACEPARENT
    finally:
        agent_tracing.use_provider(previous)


def test_a_traced_agent_reports_its_own_span_in_the_servers_trace(spans):
    with agent_tracing.span("model.swap", traceparent=CI_TRACEPARENT) as current:
        reported = agent_tracing.traceparent_of(current, CI_TRACEPARENT)
    swap = one(spans, "model.swap")
    assert reported == traceparent_of(swap) != CI_TRACEPARENT
    assert swap.context.trace_id == int(CI_TRACE, 16) and swap.parent.span_id == int(CI_SPAN, 16)


def test_the_agent_runs_on_a_device_without_opentelemetry(tmp_path):
    code = """
import sys
sys.modules["opentelemetry"] = None  # any import of it fails, as on a device without the package
from pathlib import Path
from hotswap_device import tracing
from hotswap_device.download import verify_file
assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}) is False
with tracing.span("model.swap", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01") as current:
    assert current is None and tracing.traceparent_of(current, "x") == "x"
path = Path(sys.argv[1])
path.write_bytes(b"abc")
verify_file(path, size=3, sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
