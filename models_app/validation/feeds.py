"""What the model is fed: every input's shape, dtype and values, from a profile, sample inputs or honest guesses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models_app.validation.profiles import normalise_dtype

# onnxruntime's type strings for the tensors we can generate inputs for.
ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}  # fmt: skip
_SEED = 0
# Guesses by dimension name; the report says which rule chose each size.
_BATCH = re.compile(r"^(n|b|bs|batch|batch_?size|num_?batch(es)?|unk__\d+)$", re.I)
_SPATIAL = re.compile(r"^(h|w|height|width|img_?h|img_?w|image_?(height|width)|rows|cols)$", re.I)
_SEQUENCE = re.compile(r"(seq|sequence|len|length|time|samples|frames|tokens|steps)", re.I)
_STATE = re.compile(r"(state|hidden|cell|past|cache|memory|^h0$|^c0$|^h$|^c$)", re.I)
_RATE = re.compile(r"^(sr|sample_?rate|sampling_?rate|rate)$", re.I)
_MASK = re.compile(r"mask", re.I)
GUESSED_SPATIAL = 224  # a common image size
GUESSED_SEQUENCE = 128
GUESSED_RATE = 16000


class UnsupportedInput(ValueError):
    """An input whose type we cannot generate data for (sequences, maps, bfloat16, ...)."""


class SampleError(ValueError):
    """Sample inputs that do not fit the model; the message says how."""


def numpy_type(node: Any) -> type[np.generic]:
    dtype = ORT_TO_NUMPY.get(node.type)
    if dtype is None:
        raise UnsupportedInput(f"input {node.name!r} has type {node.type}; inputs can only be generated "
                               "for numeric, bool and string tensors")
    return dtype


@dataclass
class InputPlan:
    """One input as it is fed: shape, dtype, where the shape came from, and how its values are made."""

    name: str
    dtype: str
    shape: list[int]
    source: str  # "declared", "sample file", "model" (fixed in the model) or "guessed"
    values: str  # how the values were chosen, in words

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape, "source": self.source,
                "values": self.values}


@dataclass
class FeedPlan:
    """Every input of one profile, the guesses made, and the feeds themselves (one per sample)."""

    profile: str
    inputs: list[InputPlan] = field(default_factory=list)
    guessed: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[str, str] = field(default_factory=dict)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    samples: SampleSet | None = None

    @property
    def shapes_guessed(self) -> bool:
        return any(guess["kind"] == "dim" for guess in self.guessed)

    @property
    def source(self) -> str:
        if self.shapes_guessed:
            return "guessed"
        if self.samples is not None:
            return "sample file"
        return "declared" if any(plan.source == "declared" for plan in self.inputs) else "model"

    def summary(self) -> dict[str, Any]:
        return {"name": self.profile, "source": self.source, "inputs": [plan.to_dict() for plan in self.inputs],
                "guessed": self.guessed, "feedback": self.feedback,
                "samples": len(self.samples) if self.samples is not None else None}


class SampleSet:
    """An .npz of sample inputs (one array per input name, leading sample axis), labels and expected outputs."""

    def __init__(self, path: str, session: Any, *, extra_ok: tuple[str, ...] = ("labels",)):
        inputs = session.get_inputs()
        output_names = {node.name for node in session.get_outputs()}
        # allow_pickle=False: a sample file is data, and unpickling runs code.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if "inputs" in arrays and len(inputs) == 1 and inputs[0].name not in arrays:
            arrays[inputs[0].name] = arrays.pop("inputs")
        self.labels = arrays.pop("labels", None)
        self.expected = {name.removeprefix("expected."): arrays.pop(name)
                         for name in list(arrays) if name.startswith("expected.")}
        missing = [node.name for node in inputs if node.name not in arrays]
        if missing:
            raise SampleError(f"missing array(s) for input(s) {', '.join(missing)} (the file has: "
                              f"{', '.join(sorted(arrays)) or 'no input arrays'}; name each array after its input, "
                              "with a leading sample axis)")
        extra = sorted(set(arrays) - {node.name for node in inputs})
        if extra:
            raise SampleError(f"array(s) {', '.join(extra)} match no input of the model (inputs: "
                              f"{', '.join(node.name for node in inputs)}; labels go in 'labels', expected outputs "
                              "in 'expected.<output name>')")
        unknown = sorted(set(self.expected) - output_names)
        if unknown:
            raise SampleError(f"expected output(s) {', '.join(unknown)} match no output of the model "
                              f"(outputs: {', '.join(sorted(output_names))})")
        named = {**arrays, **({"labels": self.labels} if self.labels is not None else {}),
                 **{f"expected.{name}": array for name, array in self.expected.items()}}
        counts = {name: array.shape[0] if array.ndim else None for name, array in named.items()}
        if None in counts.values() or len(set(counts.values())) != 1:
            raise SampleError("every array needs the same number of samples along its first axis; found "
                              + ", ".join(f"{name}: {count}" for name, count in counts.items()))
        self.count = next(iter(counts.values()))
        if not self.count:
            raise SampleError("the sample file holds no samples")
        self.arrays: dict[str, np.ndarray] = {}
        # "stacked": one extra leading axis (sample i is array[i]); "batch": the sample axis is the batch axis.
        self.layout: dict[str, str] = {}
        for node in inputs:
            array, rank = arrays[node.name], len(node.shape)
            if array.ndim == rank + 1:
                self.layout[node.name] = "stacked"
            elif array.ndim == rank and rank >= 1:
                self.layout[node.name] = "batch"
            else:
                raise SampleError(f"input {node.name!r} has rank {rank} ({node.shape}) but its array is "
                                  f"{list(array.shape)}: give [samples, *input shape]")
            self.arrays[node.name] = array.astype(numpy_type(node), copy=False)

    def __len__(self) -> int:
        return self.count

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(array[index]) if self.layout[name] == "stacked" else array[index : index + 1]
                for name, array in self.arrays.items()}

    def batches(self, session: Any, size: int = 256):
        """(feed, first sample, rows): whole batches when every input has a dynamic batch axis, else one by one."""
        dynamic = all(self.layout[node.name] == "batch" and node.shape and not isinstance(node.shape[0], int)
                      for node in session.get_inputs())
        step = size if dynamic else 1
        for start in range(0, self.count, step):
            rows = min(step, self.count - start)
            if step == 1:
                yield self.feed(start), start, 1
            else:
                yield {name: array[start : start + rows] for name, array in self.arrays.items()}, start, rows


def _guess_dim(input_name: str, axis: int, rank: int, dim: Any, metadata: dict[str, str]) -> tuple[int, str, str]:
    """(size, why, kind): kind "batch" for a batch axis at 1 (how devices call a model), else "dim"."""
    name = dim if isinstance(dim, str) else ""
    for key, value in metadata.items():
        if name and key.lower() == name.lower() and value.strip().isdigit() and int(value) > 0:
            return int(value), f"the model's metadata {key}={value}", "dim"
    if _BATCH.match(name) or (not name and axis == 0 and rank >= 2):
        return 1, "a batch dimension: one sample per inference, as a device calls the model", "batch"
    if _SPATIAL.match(name) or (rank == 4 and axis >= 2):
        return GUESSED_SPATIAL, f"a spatial dimension: {GUESSED_SPATIAL}, a common image size", "dim"
    if _SEQUENCE.search(name) or _SEQUENCE.search(input_name):
        return GUESSED_SEQUENCE, f"a sequence dimension: {GUESSED_SEQUENCE}", "dim"
    return 1, "no hint: the smallest size", "dim"


def _values(dtype: type[np.generic], input_name: str, shape: tuple[int, ...], spec: dict[str, Any],
            rng: np.random.Generator) -> tuple[np.ndarray, str, bool]:
    """The array, how its values were chosen, and whether that was a guess worth listing."""
    if "value" in spec:
        return np.full(shape, spec["value"], dtype=dtype), f"declared value {spec['value']}", False
    if "range" in spec:
        low, high = spec["range"]
        if np.issubdtype(dtype, np.integer):
            return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype), f"declared range [{low}, {high}]", \
                False
        return rng.uniform(low, high, size=shape).astype(dtype), f"declared range [{low}, {high}]", False
    if dtype is np.object_:
        return np.full(shape, "", dtype=object), "empty strings", True
    if _STATE.search(input_name):
        return np.zeros(shape, dtype=dtype), "zeros (recurrent state)", False
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype), "random normal", False
    if _MASK.search(input_name):
        return np.ones(shape, dtype=dtype), "ones (a mask letting everything through)", True
    if _RATE.match(input_name):
        return np.full(shape, GUESSED_RATE, dtype=dtype), f"{GUESSED_RATE} (a sample rate)", True
    # Zeros: integer inputs are often indices or counts, and 0 is valid for every one of them.
    return np.zeros(shape, dtype=dtype), "zeros", True


def plan(session: Any, profile: dict[str, Any] | None, *, samples_path: str | None = None, seed: int = _SEED,
         hints: dict[str, dict[str, list]] | None = None) -> FeedPlan:
    """Every input of the session, shaped and filled as the profile says and, where it says nothing, guessed.

    hints: signature.graph_hints' sizes the graph fixes ({input: {axis: [size, why]}}), taken before any guess.
    """
    profile = profile or {}
    specs: dict[str, dict[str, Any]] = profile.get("inputs", {})
    feed_plan = FeedPlan(profile.get("name", "default"), feedback=dict(profile.get("feedback", {})))
    inputs = session.get_inputs()
    unknown = sorted(set(specs) - {node.name for node in inputs})
    if unknown:
        raise SampleError(f"the profile names input(s) {', '.join(unknown)} the model does not have "
                          f"(inputs: {', '.join(node.name for node in inputs)})")
    output_names = [node.name for node in session.get_outputs()]
    for output, fed in feed_plan.feedback.items():
        if output not in output_names or fed not in {node.name for node in inputs}:
            raise SampleError(f"feedback {output} -> {fed}: the model has outputs {', '.join(output_names)} and "
                              f"inputs {', '.join(node.name for node in inputs)}")
    if samples_path is not None:
        feed_plan.samples = SampleSet(samples_path, session)
        first = feed_plan.samples.feed(0)
        for node in inputs:
            feed_plan.inputs.append(InputPlan(node.name, str(np.dtype(numpy_type(node))), list(first[node.name].shape),
                                              "sample file", "the sample file's"))
        feed_plan.feeds = [feed_plan.samples.feed(i) for i in range(len(feed_plan.samples))]
        return feed_plan
    # Symbolic sizes: the profile's dims, then every declared shape binds the names at its axes.
    bound: dict[str, int] = dict(profile.get("dims", {}))
    fixed = {name: {int(axis) % len(node.shape): hint for axis, hint in (hints or {}).get(name, {}).items()}
             for node in inputs if (name := node.name) in (hints or {}) and node.shape}
    for node in inputs:
        declared = specs.get(node.name, {}).get("shape")
        if declared is not None and len(declared) == len(node.shape):
            for dim, size in zip(node.shape, declared, strict=True):
                if isinstance(dim, str):
                    bound.setdefault(dim, size)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    rng = np.random.default_rng(seed)
    guessed_names: dict[str, str] = {}
    feed: dict[str, np.ndarray] = {}
    for node in inputs:
        dtype = numpy_type(node)
        spec = specs.get(node.name, {})
        if spec.get("dtype") and normalise_dtype(spec["dtype"]) != str(np.dtype(dtype)) and dtype is not np.object_:
            raise SampleError(f"the profile gives {node.name!r} dtype {spec['dtype']}; the model takes "
                              f"{np.dtype(dtype)}")
        shape, origins = [], set()
        if spec.get("shape") is not None:
            if len(spec["shape"]) != len(node.shape):
                raise SampleError(f"the profile gives {node.name!r} rank {len(spec['shape'])} ({spec['shape']}); "
                                  f"the model's is {len(node.shape)} ({node.shape})")
            shape, origins = list(spec["shape"]), {"declared"}
        else:
            for axis, dim in enumerate(node.shape):
                if isinstance(dim, int) and dim >= 0:
                    shape.append(dim)
                elif isinstance(dim, str) and dim in bound:
                    shape.append(bound[dim])
                    origins.add(guessed_names.get(dim, "declared"))
                elif axis in fixed.get(node.name, {}):
                    size, why = fixed[node.name][axis]
                    if isinstance(dim, str):
                        bound[dim] = size
                        guessed_names[dim] = "model"
                    shape.append(size)
                    feed_plan.guessed.append({"kind": "graph", "input": node.name, "axis": axis,
                                              "dim": dim if isinstance(dim, str) else None, "value": size,
                                              "why": f"fixed by the graph: {why}"})
                else:
                    size, why, kind = _guess_dim(node.name, axis, len(node.shape), dim, metadata)
                    if isinstance(dim, str):
                        bound[dim] = size  # a name shared with a later input gets the same size
                        guessed_names[dim] = "guessed" if kind == "dim" else "batch of 1"
                    shape.append(size)
                    origins.add("guessed" if kind == "dim" else "batch of 1")
                    feed_plan.guessed.append({"kind": kind, "input": node.name, "axis": axis,
                                              "dim": dim if isinstance(dim, str) else None, "value": size, "why": why})
        source = next((origin for origin in ("guessed", "declared", "batch of 1") if origin in origins), "model")
        array, values, guessed_value = _values(dtype, node.name, tuple(shape), spec, rng)
        if guessed_value:
            feed_plan.guessed.append({"kind": "value", "input": node.name, "value": values, "why":
                                      "no value or range declared for a non-float input"})
        feed[node.name] = array
        feed_plan.inputs.append(InputPlan(node.name, str(np.dtype(dtype)), shape, source, values))
    feed_plan.feeds = [feed]
    return feed_plan
