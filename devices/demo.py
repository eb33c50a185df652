"""The demo fleet's two models: small real ONNX models made with onnx.helper on first start, uploaded through the
normal path (the validation worker checks them) and set as the demo devices' desired state, one slot each.

`manage.py simulate_fleet --demo-models` (runstack's demo fleet) calls demo_models_install().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from django.conf import settings
from django.db.models import QuerySet
from onnx import TensorProto, helper, numpy_helper

DEMO_VERSION = "1.0.0"
_OPSET = 17
_IR_VERSION = 8  # what onnxruntime releases of the last years all load


def _model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray], name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(array, key) for key, array in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="hotswap-demo")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_bytes() -> bytes:
    """A 4-class classifier: `features` [1, 16] → Gemm → Softmax → `probabilities` [1, 4]."""
    rng = np.random.default_rng(14)
    return _model(
        [helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4])],
        {"weight": rng.standard_normal((16, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)},
        "demo_classifier")


def detector_bytes() -> bytes:
    """A detector-shaped model: `image` [1, 3, 32, 32] → pooled features → 8 `boxes` [1, 8, 4] and their
    `scores` [1, 8], each in [0, 1]."""
    rng = np.random.default_rng(15)
    return _model(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["raw"]),
         helper.make_node("Sigmoid", ["raw"], ["squashed"]),
         helper.make_node("Split", ["squashed", "split"], ["box_values", "scores"], axis=1),
         helper.make_node("Reshape", ["box_values", "box_shape"], ["boxes"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 8])],
        {"weight": rng.standard_normal((3, 40)).astype(np.float32), "bias": np.zeros(40, np.float32),
         "split": np.array([32, 8], np.int64), "box_shape": np.array([1, 8, 4], np.int64)},
        "demo_detector")


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: str
    description: str
    build: Callable[[], bytes]


DEMO_MODELS = (
    DemoModel("demo-classifier", "classification", "Demo: a 4-class classifier of 16 features (made by runstack).",
              classifier_bytes),
    DemoModel("demo-detector", "detection", "Demo: a detector-shaped model, 8 boxes and scores per 32x32 image "
                                            "(made by runstack).", detector_bytes),
)


def demo_models_install(devices: QuerySet) -> list[str]:
    """On first start: uploads each demo model not in the registry yet and makes it desired on `devices`.

    A demo model already in the registry is left alone (and so is what devices run), so a restart never
    undoes what an operator did since. Returns one line per model saying what happened.
    """
    from devices.services.desired_state import desired_state_set
    from models_app.models import ModelVersion
    from models_app.services import model_version_upload
    from models_app.storage import artifact_store
    from models_app.uploads import PendingArtifact

    lines = []
    for demo in DEMO_MODELS:
        if ModelVersion.objects.filter(ai_model__name=demo.name).exists():
            lines.append(f"{demo.name}: already in the registry")
            continue
        artifact = PendingArtifact.receive(artifact_store(), [demo.build()], filename=f"{demo.name}.onnx",
                                           max_bytes=settings.ARTIFACT_MAX_BYTES)
        version, _created = model_version_upload(artifact=artifact, name=demo.name, version=DEMO_VERSION,
                                                  framework="onnx", uploaded_by=None, task=demo.task,
                                                  description=demo.description, tags=["demo"])
        # Devices are offered it once the validation worker has passed it.
        result = desired_state_set(devices=devices, version=version, reason="demo fleet: first start",
                                   source="demo")
        lines.append(f"{version.model_id}: uploaded (validation queued), desired on {result.changed} devices")
    return lines
