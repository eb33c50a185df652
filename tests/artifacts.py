"""Builders for real model artifacts in memory, so the test-suite never commits binaries."""

from __future__ import annotations

import io
import json
import math
import stat
import tarfile
import zipfile
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int]


def onnx_model_bytes(
    *,
    inputs: Sequence[tuple[str, Shape]] = (("input", [1, 4]),),
    hidden: int = 8,
    outputs: Sequence[tuple[str, Shape]] = (("output", [1, 2]),),
    batch_symbolic: bool = False,
    opset: int = 17,
    big_initializer_bytes: int = 0,
) -> bytes:
    """A Flatten → MatMul/Add → Relu → MatMul/Add graph per output (summing the inputs), checker-valid."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    def dims(shape: Shape) -> list[int | str]:
        return ["batch", *shape[1:]] if batch_symbolic else list(shape)

    hidden_sum = "hidden_sum"
    for i, (name, shape) in enumerate(inputs):
        nodes.append(helper.make_node("Flatten", [name], [f"flat{i}"], axis=1))
        term = hidden_sum if len(inputs) == 1 else f"term{i}"
        nodes.append(helper.make_node("MatMul", [f"flat{i}", weight(f"w_in{i}", math.prod(shape[1:]), hidden)], [term]))
        if len(inputs) > 1:
            acc = "zero" if i == 0 else f"acc{i - 1}"
            nodes.append(helper.make_node("Add", [acc, term], [hidden_sum if i == len(inputs) - 1 else f"acc{i}"]))
    if len(inputs) > 1:
        inits.append(numpy_helper.from_array(np.zeros(hidden, np.float32), "zero"))
    nodes.append(helper.make_node("Add", [hidden_sum, weight("b_hidden", hidden)], ["pre_relu"]))
    nodes.append(helper.make_node("Relu", ["pre_relu"], ["hidden"]))
    for j, (name, shape) in enumerate(outputs):
        width = math.prod(shape[1:])
        flat = name if len(shape) == 2 else f"flat_out{j}"
        nodes.append(helper.make_node("MatMul", ["hidden", weight(f"w_out{j}", hidden, width)], [f"mm_out{j}"]))
        nodes.append(helper.make_node("Add", [f"mm_out{j}", weight(f"b_out{j}", width)], [flat]))
        if len(shape) != 2:
            target = numpy_helper.from_array(np.array([0, *shape[1:]], np.int64), f"shape_out{j}")
            inits.append(target)
            nodes.append(helper.make_node("Reshape", [flat, target.name], [name]))
    if big_initializer_bytes:
        # Random, so the padding doesn't compress away inside ZIP packages.
        pad = rng.random(big_initializer_bytes // 4, dtype=np.float32)
        inits.append(numpy_helper.from_array(pad, "padding"))
    graph = helper.make_graph(
        nodes,
        "hotswap_test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims(shape)) for name, shape in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hotswap-tests")
    # ir_version 8 is what onnxruntime releases of the last years all load.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def zip_bytes(entries: dict[str | zipfile.ZipInfo, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP archive holding the given entries (a ZipInfo key sets names, modes and flags as given)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_package_bytes(
    model_bytes: bytes,
    *,
    model_file: str = "model.onnx",
    manifest: dict | bytes | None = None,
    extra_entries: dict[str, bytes] | None = None,
) -> bytes:
    """A ZIP model package: manifest.json (default names model_file) plus the model file."""
    manifest = {"model_file": model_file} if manifest is None else manifest
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return zip_bytes({"manifest.json": raw, model_file: model_bytes, **(extra_entries or {})})


def tflite_bytes(*, version: int = 3) -> bytes:
    """A minimal real flatbuffer: root offset, 'TFL3', a vtable and a root table holding Model.version."""
    vtable = (6).to_bytes(2, "little") + (8).to_bytes(2, "little") + (4).to_bytes(2, "little") + b"\0\0"
    table = (16 - 8).to_bytes(4, "little", signed=True) + version.to_bytes(4, "little")
    return (16).to_bytes(4, "little") + b"TFL3" + vtable + table


_SAVEDMODEL_FILES = {
    "saved_model.pb": b"\x08\x01\x12\x00",
    "variables/variables.index": b"\0" * 16,
    "variables/variables.data-00000-of-00001": b"\0" * 64,
}


def savedmodel_zip_bytes(*, root: str = "saved_model/") -> bytes:
    return zip_bytes({f"{root}{name}": data for name, data in _SAVEDMODEL_FILES.items()})


def savedmodel_tar_bytes(*, root: str = "saved_model/") -> bytes:
    return tar_bytes({f"{root}{name}": data for name, data in _SAVEDMODEL_FILES.items()})


def tar_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    """An uncompressed tar of regular files, plus optional symlinks {name: target}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def pytorch_zip_bytes() -> bytes:
    """The torch.save layout (stored, not deflated, as torch writes it); data.pkl is never a real pickle."""
    entries = {"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3\n", "archive/data/0": b"\0" * 16}
    return zip_bytes(entries, compression=zipfile.ZIP_STORED)


def _tag(field: int, wire: int) -> bytes:
    value, out = field << 3 | wire, bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def coreml_mlmodel_bytes(*, model_type_field: int = 500) -> bytes:
    """A Core ML Model message: specificationVersion 5, an empty description, an empty model-type message."""
    return _tag(1, 0) + b"\x05" + _tag(2, 2) + b"\x00" + _tag(model_type_field, 2) + b"\x00"


def mlpackage_zip_bytes() -> bytes:
    root = "Model.mlpackage/"
    return zip_bytes(
        {
            f"{root}Manifest.json": b'{"fileFormatVersion": "1.0.0"}',
            f"{root}Data/com.apple.CoreML/model.mlmodel": coreml_mlmodel_bytes(model_type_field=502),
        }
    )


def zip_bomb_bytes(*, uncompressed_bytes: int = 200 * 1024**2) -> bytes:
    """One deflated entry of zeros, written in chunks so building it stays small in memory."""
    buffer, chunk = io.BytesIO(), bytes(1024**2)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b'{"model_file": "model.onnx"}')
        with archive.open("model.onnx", "w", force_zip64=True) as entry:
            for _ in range(uncompressed_bytes // len(chunk)):
                entry.write(chunk)
    return buffer.getvalue()


def zip_traversal_bytes() -> bytes:
    return zip_bytes({"manifest.json": b'{"model_file": "model.onnx"}', "../evil.onnx": b"x"})


def zip_absolute_path_bytes() -> bytes:
    return zip_bytes({"manifest.json": b'{"model_file": "model.onnx"}', "/etc/evil.onnx": b"x"})


def zip_symlink_bytes() -> bytes:
    link = zipfile.ZipInfo("model.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_bytes({"manifest.json": b'{"model_file": "model.onnx"}', link: b"/etc/passwd"})


def zip_encrypted_bytes() -> bytes:
    """A package whose model entry is flagged encrypted (general-purpose bit 0 in both of its headers)."""
    data = bytearray(zip_package_bytes(onnx_model_bytes()))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = -1
        while (start := data.find(signature, start + 1)) != -1:
            data[start + flag_at] |= 0x01
    return bytes(data)


# Validation pipeline models (tests/models_app/validation, bench/validation.py).


def _finish_model(graph: onnx.GraphProto, *, opsets: Sequence[tuple[str, int]] = (("", 17),),
                  check: bool = True) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets],
                              producer_name="hotswap-tests")
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_onnx_bytes(weights: np.ndarray, bias: np.ndarray, *, input_name: str = "input") -> bytes:
    """softmax(x @ weights + bias): [batch, features] → [batch, classes] probabilities."""
    features, classes = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "weights"], ["logits_raw"]),
         helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "weights"),
                     numpy_helper.from_array(bias.astype(np.float32), "bias")],
    )
    return _finish_model(graph)


def slow_onnx_bytes(*, size: int = 1024, depth: int = 8, batch: int = 256) -> bytes:
    """A chain of `depth` [batch, size] @ [size, size] MatMuls sharing one weight: slow to run, small on disk."""
    weight = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    nodes, previous = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, size])],
                              initializer=[numpy_helper.from_array(weight, "w")])
    return _finish_model(graph)


def allocation_bomb_onnx_bytes(*, op: str = "ConstantOfShape", elements: int = 10 * 1024**3) -> bytes:
    """A 100-byte model that allocates `elements` float32s (40 GB by default) at run time, then sums them."""
    shape = numpy_helper.from_array(np.array([elements // 1024, 1024], np.int64), "shape")
    if op == "ConstantOfShape":
        make = helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))
    else:
        make = helper.make_node("Expand", ["x", "shape"], ["big"])
    graph = helper.make_graph(
        [make, helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "allocation_bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[shape],
    )
    return _finish_model(graph)


def missing_initializer_onnx_bytes() -> bytes:
    """MatMul(x, w) where 'w' is neither an input, an initializer nor any node's output."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "missing_initializer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    return _finish_model(graph, check=False)


def custom_op_onnx_bytes() -> bytes:
    """Checker-valid (unknown domains are not checked) but no runtime implements com.example:Mystery."""
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="com.example")], "custom_op",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return _finish_model(graph, opsets=(("", 17), ("com.example", 1)))


def endless_loop_onnx_bytes() -> bytes:
    """A Loop with 2**62 iterations and an always-true condition: effectively runs forever."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip_count", "keep_going", "x"], ["y"], body=body)], "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array(2**62, np.int64), "trip_count"),
                     numpy_helper.from_array(np.array(True), "keep_going")],
    )
    return _finish_model(graph)


def big_weight_onnx_bytes(*, megabytes: int = 100) -> bytes:
    """x [1, n] @ w [n, n] with w about `megabytes` MB of random float32: a big initializer the graph really uses."""
    n = int(math.sqrt(megabytes * 1024**2 / 4))
    weight = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big_weight",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              initializer=[numpy_helper.from_array(weight, "w")])
    return _finish_model(graph)


def external_data_package_bytes(*, location: str = "weights.bin", model_file: str = "model/model.onnx") -> bytes:
    """A ZIP package whose model keeps its initializers in `location`, stored next to model_file."""
    model = onnx.load_from_string(onnx_model_bytes(hidden=64))
    blob = bytearray()
    # By hand rather than onnx's converter, which refuses (rightly) to write outside the model's folder.
    for tensor in model.graph.initializer:
        raw = tensor.raw_data
        onnx.external_data_helper.set_external_data(tensor, location=location, offset=len(blob), length=len(raw))
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        blob += raw
    folder = model_file.rsplit("/", 1)[0] + "/" if "/" in model_file else ""
    return zip_package_bytes(model.SerializeToString(), model_file=model_file,
                             extra_entries={f"{folder}{location}": bytes(blob)})


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# Models validated at input profiles (tests/models_app/validation/test_profiles.py, bench/validation.py).


def spatial_onnx_bytes(*, channels: int = 8, metadata: dict[str, str] | None = None) -> bytes:
    """A 3x3 convolution over x [batch, 3, height, width] pooled to [batch, channels]: latency grows with H x W."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("ReduceMean", ["relu"], ["features"], axes=[2, 3], keepdims=0)],
        "spatial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", channels])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hotswap-tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


RECURRENT_STATE = 16


def recurrent_onnx_bytes() -> bytes:
    """A voice-activity-like model: audio [batch, samples], state [2, batch, 16], sr int64 scalar.

    stateN = tanh(0.5 state + mean(audio) * sr / 16000); prob = sigmoid(mean of stateN over its axes 0 and 2).
    The audio is read 64 samples at a time (a Reshape), so a [1, 1] audio input fails like a real VAD's would.
    """
    nodes = [
        helper.make_node("Reshape", ["audio", "frames_shape"], ["frames"]),
        helper.make_node("ReduceMean", ["frames"], ["level3"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["level3", "axis1"], ["level"]),
        helper.make_node("Cast", ["sr"], ["sr_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_float", "rate"], ["scale"]),
        helper.make_node("Mul", ["level", "scale"], ["drive"]),
        helper.make_node("Mul", ["state", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "drive"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["stateN"]),
        helper.make_node("ReduceMean", ["stateN"], ["pooled"], axes=[0, 2], keepdims=0),
        helper.make_node("Sigmoid", ["pooled"], ["prob"]),
    ]
    inits = [numpy_helper.from_array(np.array([0, -1, 64], np.int64), "frames_shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "rate"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    graph = helper.make_graph(
        nodes, "recurrent",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", RECURRENT_STATE]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", RECURRENT_STATE])],
        initializer=inits,
    )
    return _finish_model(graph)


def recurrent_reference(audio: np.ndarray, state: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """recurrent_onnx_bytes's outputs computed in numpy, for one call."""
    level = audio.reshape(audio.shape[0], -1).mean(axis=1, dtype=np.float64)[:, None]
    state_n = np.tanh(0.5 * state + level * (sr / 16000.0))
    return 1 / (1 + np.exp(-state_n.mean(axis=(0, 2)))), state_n
