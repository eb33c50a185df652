"""The demo fleet's two generated models: real ONNX models, uploaded through the normal path on first start only."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from devices.demo import DEMO_MODELS, classifier_bytes, demo_models_install, detector_bytes
from devices.models import Device
from devices.services.registry import device_register
from models_app.models import ModelVersion
from models_app.storage import artifact_store


def _run(content: bytes) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    feeds = {arg.name: np.random.default_rng(0).random(arg.shape).astype(np.float32) for arg in session.get_inputs()}
    return {arg.name: out for arg, out in zip(session.get_outputs(), session.run(None, feeds), strict=True)}


def test_the_demo_models_are_a_classifier_and_a_detector_onnxruntime_runs():
    probabilities = _run(classifier_bytes())["probabilities"]
    detected = _run(detector_bytes())

    assert probabilities.shape == (1, 4) and np.isclose(probabilities.sum(), 1.0, atol=1e-5)
    assert detected["boxes"].shape == (1, 8, 4) and detected["scores"].shape == (1, 8)
    assert detected["boxes"].min() >= 0 and detected["boxes"].max() <= 1
    assert classifier_bytes() == classifier_bytes()  # generated the same way at every first start


@pytest.mark.django_db
def test_the_first_start_uploads_both_and_makes_them_desired_and_a_restart_changes_nothing():
    devices = [device_register(device_id=f"demo-{i:05d}", device_type="edge-camera", region="eu-west")
               for i in (1, 2, 3)]

    first = demo_models_install(Device.objects.filter(pk__in=[d.pk for d in devices]))
    again = demo_models_install(Device.objects.filter(pk__in=[d.pk for d in devices]))

    assert first == [f"{demo.name}-1.0.0: uploaded (validation queued), desired on 3 devices" for demo in DEMO_MODELS]
    assert again == [f"{demo.name}: already in the registry" for demo in DEMO_MODELS]
    stored = {v.model_id: v for v in ModelVersion.objects.filter(ai_model__name__startswith="demo-")}
    assert sorted(stored) == ["demo-classifier-1.0.0", "demo-detector-1.0.0"]
    assert {v.ai_model.task for v in stored.values()} == {"classification", "detection"}
    detector = stored["demo-detector-1.0.0"]
    with artifact_store().open(detector.storage_key, detector.size_bytes) as handle:
        assert handle.read() == detector_bytes()  # the artifact the validation worker and the devices get
