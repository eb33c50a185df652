"""Step 3: the model's inputs and outputs, compared with the declared schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import onnx

from models_app.validation.profiles import normalise_dtype
from models_app.validation.result import StepResult

Dim = int | str
UNKNOWN_DIM = "?"
# ONNX element type names (lower-cased TensorProto.DataType) that differ from numpy's names.
_ONNX_TO_NUMPY = {"float": "float32", "double": "float64"}


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, element type (numpy's name) and shape (ints, symbolic names, or None)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype} (any shape)"
        return f"{self.dtype} [{', '.join(str(dim) for dim in self.shape)}]"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = None if self.shape is None else list(self.shape)
        return data


def model_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    graph = model.graph
    # Before IR 4 initializers were listed as inputs too; they are defaults, not something a caller feeds.
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [_spec(value) for value in graph.input if value.name not in initializers]
    return inputs, [_spec(value) for value in graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(value.name, (kind or "unknown").removesuffix("_type"), None)
    tensor = value.type.tensor_type
    name = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    dtype = _ONNX_TO_NUMPY.get(name, name)
    if not tensor.HasField("shape"):
        return TensorSpec(value.name, dtype, None)
    dims: list[Dim] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or UNKNOWN_DIM)
    return TensorSpec(value.name, dtype, tuple(dims))


def declared_specs(items: list[dict[str, Any]], kind: str) -> list[TensorSpec]:
    """The declared schema as TensorSpecs; ValueError names the malformed entry."""
    specs = []
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("dtype"), str)):
            raise ValueError(f"declared {kind} #{index + 1} needs a name and a dtype: {item!r}")
        shape = item.get("shape")
        if shape is not None and not (isinstance(shape, list | tuple) and all(
                isinstance(dim, str | int) or dim is None for dim in shape)):
            raise ValueError(f"declared {kind} {item['name']!r} has a malformed shape {shape!r}")
        dims = None if shape is None else tuple(UNKNOWN_DIM if dim is None else dim for dim in shape)
        specs.append(TensorSpec(item["name"], normalise_dtype(item["dtype"]), dims))
    return specs


def _dims_compatible(declared: Dim, actual: Dim) -> bool:
    if declared == UNKNOWN_DIM:
        return True  # the declaration does not care
    if isinstance(declared, int) and isinstance(actual, int):
        return declared == actual
    # A declared fixed size fits a dynamic model dimension; a declared dynamic one needs a dynamic model.
    # Symbolic names are local to each model ("batch" vs "N"), so any two symbolic dims agree.
    return isinstance(actual, str)


def _shapes_compatible(declared: tuple[Dim, ...] | None, actual: tuple[Dim, ...] | None) -> bool:
    if declared is None or actual is None:
        return True
    return len(declared) == len(actual) and all(map(_dims_compatible, declared, actual))


def compare(kind: str, declared: list[TensorSpec], actual: list[TensorSpec]) -> list[str]:
    """Every difference between the declared and the actual tensors, spelled out."""
    differences = []
    by_name = {spec.name: spec for spec in actual}
    declared_names = {spec.name for spec in declared}
    for spec in declared:
        found = by_name.get(spec.name)
        if found is None:
            names = ", ".join(repr(name) for name in by_name) or "none"
            differences.append(f"declared {kind} {spec.name!r} is not in the model (model {kind}s: {names})")
        elif spec.dtype != found.dtype or not _shapes_compatible(spec.shape, found.shape):
            differences.append(f"{kind} {spec.name!r}: declared {spec.describe()}, model has {found.describe()}")
    for spec in actual:
        if spec.name not in declared_names:
            differences.append(f"model {kind} {spec.name!r} ({spec.describe()}) is not declared")
    return differences


def graph_hints(model: onnx.ModelProto) -> dict[str, dict[int, list]]:
    """Input dimensions the graph itself fixes: {input: {axis (negative: from the end): [size, why]}}.

    An input multiplied by a fixed weight (MatMul, Gemm) has the weight's inner size as its last dimension; an
    input convolved with a fixed kernel (Conv) has the kernel's input channels (times the groups) on axis 1.
    """
    graph = model.graph
    weights = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    inputs = {value.name for value in graph.input} - set(weights)
    hints: dict[str, dict[int, list]] = {}
    for node in graph.node:
        if len(node.input) < 2 or node.input[0] not in inputs or node.input[1] not in weights:
            continue
        weight = weights[node.input[1]]
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        if node.op_type in ("MatMul", "Gemm") and len(weight) >= 2:
            inner = weight[-1] if node.op_type == "Gemm" and attributes.get("transB") else weight[-2]
            axis = 0 if node.op_type == "Gemm" and attributes.get("transA") else -1
            hints.setdefault(node.input[0], {})[axis] = [inner, f"{node.op_type} with a fixed {weight} weight"]
        elif node.op_type == "Conv" and len(weight) >= 3:
            channels = weight[1] * int(attributes.get("group", 1))
            hints.setdefault(node.input[0], {})[1] = [channels, f"Conv with a fixed {weight} kernel"]
    return hints


def check_signature(step: StepResult, model: onnx.ModelProto, *, declared_inputs: list[dict[str, Any]],
                    declared_outputs: list[dict[str, Any]]) -> None:
    inputs, outputs = model_signature(model)
    step.data.update(inputs=[spec.to_dict() for spec in inputs], outputs=[spec.to_dict() for spec in outputs],
                     graph_hints={name: {str(axis): hint for axis, hint in axes.items()}
                                  for name, axes in graph_hints(model).items()})
    summary = f"{len(inputs)} input(s): " + ", ".join(f"{s.name} {s.describe()}" for s in inputs) + \
        f"; {len(outputs)} output(s): " + ", ".join(f"{s.name} {s.describe()}" for s in outputs)
    try:
        declared = {"input": declared_specs(declared_inputs, "input"),
                    "output": declared_specs(declared_outputs, "output")}
    except ValueError as exc:
        step.fail(f"the declared schema is malformed: {exc}")
        return
    differences = []
    if declared["input"]:
        differences += compare("input", declared["input"], inputs)
    if declared["output"]:
        differences += compare("output", declared["output"], outputs)
    step.data["differences"] = differences
    if differences:
        step.fail("the model does not match its declared schema: " + "; ".join(differences))
    elif declared["input"] or declared["output"]:
        step.detail = f"{summary}; matches the declared schema"
    else:
        step.detail = f"{summary}; no schema declared to compare with"
