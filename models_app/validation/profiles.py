"""Input profiles: how a model is called (concrete shapes, dtypes, small values, sample inputs, state feedback).

A profile, as declared on a model or a version (JSON):

    {"name": "640x640",
     "dims": {"batch": 1},                                  # symbolic dimension name -> size, for every input
     "inputs": {"images": {"shape": [1, 3, 640, 640], "dtype": "float32"},
                "sr": {"shape": [], "value": 16000},         # a constant
                "audio": {"shape": [1, 512], "range": [-1, 1]}},   # uniform values in [low, high]
     "feedback": {"stateN": "state"},                       # output -> input, fed back between calls
     "samples": "holdout"}                                  # one of the model's test sets: its inputs are fed

Stdlib only: the web process checks declarations with it, the validation child resolves them.
"""

from __future__ import annotations

import math
import re
from typing import Any

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_PROFILES = 8
MAX_RANK = 16
MAX_DIM = 2**31 - 1
ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "bfloat16": 2, "int8": 1, "int16": 2, "int32": 4,
            "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "string": 8}
_INPUT_KEYS = {"shape", "dtype", "value", "range"}
_PROFILE_KEYS = {"name", "dims", "inputs", "feedback", "samples"}

# How to declare one, said in upload answers, guessed-shape reports and the console.
HOW_TO_DECLARE = (
    'declare an input profile: PUT /api/v1/models/{name}/input-profiles (or .../versions/{version}/input-profiles, '
    'or "input_profiles" in POST /api/v1/models/{model_id}/validate) with '
    '[{"name": "640x640", "inputs": {"<input>": {"shape": [1, 3, 640, 640]}}}], '
    'or name a test set of sample inputs with "samples"'
)


class ProfileError(ValueError):
    """A declaration that cannot be right; `details` holds [{"field", "message"}] for the API's error format."""

    def __init__(self, details: list[dict[str, str]]):
        self.details = details
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)) or \
        isinstance(value, bool)


def normalise_dtype(dtype: str) -> str:
    aliases = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
               "boolean": "bool", "str": "string"}
    name = dtype.strip().lower()
    if name.startswith("tensor(") and name.endswith(")"):
        name = name[7:-1]
    return aliases.get(name, name)


def _signature_by_name(signature: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    if not signature:
        return None
    return {tensor["name"]: tensor for tensor in signature if isinstance(tensor, dict) and "name" in tensor}


def check_profiles(profiles: Any, *, inputs: list[dict[str, Any]] | None = None,
                   outputs: list[dict[str, Any]] | None = None, memory_mb: int | None = None,
                   sample_sets: set[str] | None = None) -> list[dict[str, Any]]:
    """The profiles, checked against the model's signature where it is known; ProfileError lists every problem.

    inputs/outputs: [{"name", "dtype", "shape"}] (ints, symbolic names or None/"?"); None: not known yet, only
    what needs no signature is checked (the pipeline fails the benchmark step with the exact reason instead).
    """
    errors: list[dict[str, str]] = []

    def error(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    if not isinstance(profiles, list):
        raise ProfileError([{"field": "input_profiles", "message": "Must be a list of profiles."}])
    if len(profiles) > MAX_PROFILES:
        error("input_profiles", f"At most {MAX_PROFILES} profiles.")
    model_inputs, model_outputs = _signature_by_name(inputs), _signature_by_name(outputs)
    seen: set[str] = set()
    for index, profile in enumerate(profiles[:MAX_PROFILES]):
        where = f"input_profiles[{index}]"
        if not isinstance(profile, dict):
            error(where, "Must be an object.")
            continue
        for key in sorted(set(profile) - _PROFILE_KEYS):
            error(f"{where}.{key}", f"Unknown field; a profile has {', '.join(sorted(_PROFILE_KEYS))}.")
        name = profile.get("name")
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            error(f"{where}.name", "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
        elif name in seen:
            error(f"{where}.name", f"Duplicate profile name {name!r}.")
        else:
            seen.add(name)
        dims = profile.get("dims", {})
        if not isinstance(dims, dict) or not all(isinstance(k, str) and _is_int(v) and 1 <= v <= MAX_DIM
                                                 for k, v in dims.items()):
            error(f"{where}.dims", "Must map symbolic dimension names to positive integers.")
            dims = {}
        samples = profile.get("samples")
        if samples is not None:
            if not isinstance(samples, str):
                error(f"{where}.samples", "Must be the name of one of the model's test sets.")
            elif sample_sets is not None and samples not in sample_sets:
                error(f"{where}.samples", f"The model has no test set {samples!r}"
                      + (f" (it has: {', '.join(sorted(sample_sets))})." if sample_sets else "."))
        specs = profile.get("inputs", {})
        if not isinstance(specs, dict):
            error(f"{where}.inputs", "Must map input names to {shape, dtype, value, range}.")
            specs = {}
        if not specs and samples is None and not dims:
            error(where, "Declare at least one input, dims or samples.")
        for input_name, spec in specs.items():
            _check_input(f"{where}.inputs.{input_name}", input_name, spec, model_inputs, dims, memory_mb, error)
        if dims and model_inputs is not None and memory_mb is not None:
            _check_bound_sizes(f"{where}.dims", specs, model_inputs, dims, memory_mb, error)
        feedback = profile.get("feedback", {})
        if not isinstance(feedback, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in feedback.items()):
            error(f"{where}.feedback", "Must map output names to the input names they are fed back into.")
            feedback = {}
        for output, fed in feedback.items():
            if model_outputs is not None and output not in model_outputs:
                error(f"{where}.feedback.{output}", f"The model has no output {output!r} "
                      f"(outputs: {', '.join(model_outputs)}).")
            if model_inputs is not None and fed not in model_inputs:
                error(f"{where}.feedback.{output}",
                      f"The model has no input {fed!r} (inputs: {', '.join(model_inputs)}).")
    if errors:
        raise ProfileError(errors)
    return profiles


def _check_input(field: str, name: str, spec: Any, model_inputs: dict[str, dict] | None, dims: dict[str, int],
                 memory_mb: int | None, error) -> None:
    if not isinstance(spec, dict):
        error(field, "Must be an object with shape, dtype, value or range.")
        return
    for key in sorted(set(spec) - _INPUT_KEYS):
        error(f"{field}.{key}", f"Unknown field; an input has {', '.join(sorted(_INPUT_KEYS))}.")
    model = None
    if model_inputs is not None:
        model = model_inputs.get(name)
        if model is None:
            error(field, f"The model has no input {name!r} (inputs: {', '.join(model_inputs) or 'none'}).")
    shape = spec.get("shape")
    dtype = spec.get("dtype")
    if dtype is not None:
        if not isinstance(dtype, str) or normalise_dtype(dtype) not in ITEMSIZE:
            error(f"{field}.dtype", f"Unknown dtype; use one of {', '.join(ITEMSIZE)}.")
            dtype = None
        elif model is not None and normalise_dtype(dtype) != normalise_dtype(str(model.get("dtype", ""))):
            error(f"{field}.dtype", f"The model takes {model.get('dtype')} for {name!r}, not {dtype}.")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                _is_int(dim) and 1 <= dim <= MAX_DIM for dim in shape):
            error(f"{field}.shape", f"Must be a list of at most {MAX_RANK} positive integers.")
            shape = None
        elif model is not None and isinstance(model.get("shape"), list):
            _check_against_model(f"{field}.shape", shape, model["shape"], dims, error)
    if shape is not None and memory_mb is not None:
        itemsize = ITEMSIZE.get(normalise_dtype(dtype or str((model or {}).get("dtype") or "float32")), 8)
        size = math.prod(shape) * itemsize
        if size > memory_mb * 2**20:
            error(f"{field}.shape", f"{shape} is {size / 2**20:.0f} MB for this input alone, over the validation "
                  f"memory limit of {memory_mb} MB.")
    if "value" in spec and not _is_number(spec["value"]):
        error(f"{field}.value", "Must be a finite number or a boolean.")
    if "range" in spec:
        bounds = spec["range"]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)
                and bounds[0] <= bounds[1]):
            error(f"{field}.range", "Must be [low, high] with low <= high.")
    if "value" in spec and "range" in spec:
        error(field, "Give a value or a range, not both.")


def _check_bound_sizes(field: str, specs: dict[str, Any], model_inputs: dict[str, dict], dims: dict[str, int],
                       memory_mb: int, error) -> None:
    """Inputs the dims bind within the memory limit (unbound dimensions counted as 1: a lower bound)."""
    for name, model in model_inputs.items():
        shape = model.get("shape")
        if name in specs or not isinstance(shape, list) or not any(isinstance(dim, str) and dim in dims
                                                                   for dim in shape):
            continue
        sizes = [dim if _is_int(dim) and dim >= 1 else dims.get(dim, 1) if isinstance(dim, str) else 1
                 for dim in shape]
        size = math.prod(sizes) * ITEMSIZE.get(normalise_dtype(str(model.get("dtype") or "float32")), 8)
        if size > memory_mb * 2**20:
            error(field, f"Input {name!r} would be {sizes}, {size / 2**20:.0f} MB alone, over the validation memory "
                  f"limit of {memory_mb} MB.")


def _check_against_model(field: str, shape: list[int], model_shape: list[Any], dims: dict[str, int], error) -> None:
    shown = "[" + ", ".join("?" if dim is None else str(dim) for dim in model_shape) + "]"
    if len(shape) != len(model_shape):
        error(field, f"Rank {len(shape)} contradicts the model's {shown} (rank {len(model_shape)}).")
        return
    for axis, (declared, actual) in enumerate(zip(shape, model_shape, strict=True)):
        if _is_int(actual) and actual >= 1 and declared != actual:
            error(field, f"Dimension {axis} is fixed at {actual} in the model ({shown}), not {declared}.")
        elif isinstance(actual, str) and actual in dims and dims[actual] != declared:
            error(field, f"Dimension {axis} ({actual}) is {dims[actual]} in the profile's dims, not {declared}.")
