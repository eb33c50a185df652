"""Test sets and sample inputs (.npz): checked by reading only the archive's directory and each array's header.

One array per model input (or "inputs" for a single-input model) with a leading sample axis; optionally
"labels" (classifiers) and "expected.<output name>" (outputs compared within a tolerance).
"""

from __future__ import annotations

import ast
import zipfile
from typing import BinaryIO

from hotswap.exceptions import ApplicationError

_NPY_MAGIC = b"\x93NUMPY"


def npz_arrays(handle: BinaryIO) -> dict[str, dict]:
    """{array name: {"shape", "dtype"}} of an .npz, without loading any array (and without numpy)."""
    try:
        with zipfile.ZipFile(handle) as archive:
            arrays = {}
            for info in archive.infolist()[:1000]:
                if not info.filename.endswith(".npy") or "/" in info.filename or info.file_size > 2**34:
                    raise ValueError(f"unexpected entry {info.filename!r}")
                with archive.open(info) as member:
                    arrays[info.filename[:-4]] = _npy_header(member.read(4096))
    except (zipfile.BadZipFile, ValueError, SyntaxError, KeyError) as exc:
        raise ApplicationError(f"A test set must be a NumPy .npz archive: {exc}.", code="INVALID_TEST_SET",
                               details=[{"field": "test_set", "message": str(exc)}]) from exc
    if not [name for name in arrays if name != "labels" and not name.startswith("expected.")]:
        raise ApplicationError("A test set needs the model's inputs ('inputs', or one array per model input name, "
                               "each with a leading sample axis); 'labels' and 'expected.<output name>' are optional.",
                               code="INVALID_TEST_SET", details=[{"field": "test_set", "message": "No input arrays."}])
    samples = {spec["shape"][0] if spec["shape"] else None for spec in arrays.values()}
    if len(samples) != 1 or None in samples:
        raise ApplicationError("Every array of a test set needs the same number of samples (first dimension).",
                               code="INVALID_TEST_SET", details=[{"field": "test_set", "message": "Sizes differ."}])
    return arrays


def _npy_header(head: bytes) -> dict:
    if not head.startswith(_NPY_MAGIC):
        raise ValueError("an entry is not a .npy array")
    major = head[6]
    length_bytes = 2 if major == 1 else 4
    length = int.from_bytes(head[8:8 + length_bytes], "little")
    header = ast.literal_eval(head[8 + length_bytes:8 + length_bytes + length].decode("latin1"))
    if not isinstance(header, dict) or "shape" not in header or "descr" not in header:
        raise ValueError("an array header is malformed")
    return {"shape": list(header["shape"]), "dtype": str(header["descr"])}


def arrays_problems(arrays: dict[str, dict], inputs: list[dict] | None, outputs: list[dict] | None) -> list[str]:
    """What keeps a test set's arrays from fitting the model's inputs and outputs (known from its validation)."""
    if not inputs:
        return []
    input_names = [tensor["name"] for tensor in inputs]
    names = set(arrays) - {"labels"}
    if "inputs" in names and len(input_names) == 1 and input_names[0] not in names:
        names = (names - {"inputs"}) | {input_names[0]}
    problems = []
    missing = [name for name in input_names if name not in names]
    if missing:
        problems.append(f"no array for input(s) {', '.join(missing)}")
    output_names = {tensor["name"] for tensor in outputs or []}
    extra = sorted(name for name in names if name not in input_names
                   and not (name.startswith("expected.") and (not output_names or name[9:] in output_names)))
    if extra:
        problems.append(f"array(s) {', '.join(extra)} match no input of the model (inputs: {', '.join(input_names)}"
                        + (f"; expected outputs are 'expected.<output>' with outputs {', '.join(sorted(output_names))}"
                           if output_names else "") + ")")
    return problems
