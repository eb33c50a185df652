"""Step 2: format and structure: the ONNX checker, IR version and opsets; a package's model file extracted."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from models_app.validation.package import ModelPackage, PackageError, safe_member
from models_app.validation.result import StepResult


def check_structure(step: StepResult, path: str, *, detected_format: str,
                    work_dir: Path) -> tuple[onnx.ModelProto, str] | None:
    """Validates the ONNX model inside the artifact; returns it (without external data) and the path to load."""
    package: ModelPackage | None = None
    try:
        if detected_format == "zip_package":
            package = ModelPackage(path)
            model_file = package.model_file()
            model_path = package.extract(model_file, work_dir / "package")
            step.data["model_file"] = model_file
        elif detected_format == "onnx":
            model_path = Path(path)
        else:
            step.fail(f"the framework is onnx but the artifact was detected as {detected_format!r}")
            return None
        try:
            # Without external data: the tensors' bytes are not needed for structure, only the graph.
            model = onnx.load(str(model_path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as exc:
            step.fail(f"not a valid ONNX protobuf (truncated or corrupt?): {exc}")
            return None
        locations = sorted(external_locations(model))
        if locations and package is None:
            step.fail("the model keeps tensors in external data files ("
                      + ", ".join(locations) + "), which a single .onnx artifact cannot carry: "
                      "upload a ZIP package holding them next to the model file")
            return None
        if package is not None:
            # onnxruntime and the checker resolve external data next to the model file.
            model_dir = posixpath.dirname(step.data["model_file"])
            for location in locations:
                package.extract(safe_member(posixpath.join(model_dir, location), "external data file"),
                                work_dir / "package")
    except PackageError as exc:
        step.fail(f"the ZIP package is unusable: {exc}")
        return None
    finally:
        if package is not None:
            package.close()
    try:
        # The path form: the C++ checker reads the file itself, so models over 2 GB and external data work.
        onnx.checker.check_model(str(model_path))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        step.fail(f"the ONNX checker rejected the model: {' '.join(str(exc).split())}")
        return None
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    step.data.update(
        ir_version=model.ir_version,
        opsets=opsets,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        nodes=len(model.graph.node),
        initializers=len(model.graph.initializer),
        external_data=locations,
    )
    step.detail = (f"valid ONNX, IR version {model.ir_version}, opsets "
                   + ", ".join(f"{domain} {version}" for domain, version in opsets.items())
                   + f", {len(model.graph.node)} nodes")
    return model, str(model_path)


def external_locations(model: onnx.ModelProto) -> set[str]:
    """Every external data file referenced anywhere in the model, subgraphs included."""
    return {
        entry.value
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
