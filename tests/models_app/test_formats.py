"""Tests for content-based artifact format detection (models_app.formats)."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import tracemalloc
import warnings
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models_app.formats import (
    UNRECOGNISED,
    ArtifactFormatError,
    DetectedFormat,
    FormatSniffer,
    detect_format,
)
from models_app.models import ArtifactFormat, Framework
from tests import artifacts

MiB = 1024**2


class _CountingReader(io.BytesIO):
    """A stored artifact that counts the bytes read from it, as remote range GETs would cost."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def sniff(data: bytes, *, chunk_size: int = MiB, archive: bool = False, **limits: int) -> DetectedFormat:
    """Feeds data in chunks and detects it; opening the stored copy fails the test unless it is an archive."""
    sniffer = FormatSniffer(**limits)
    for start in range(0, len(data), chunk_size):
        sniffer.feed(data[start : start + chunk_size])

    def open_reader() -> io.BytesIO:
        if not archive:
            pytest.fail("open_reader was called for a format detectable from the stream")
        return io.BytesIO(data)

    return sniffer.result(open_reader)


def rejection(data: bytes, *, archive: bool = True, **limits: int) -> str:
    with pytest.raises(ArtifactFormatError) as caught:
        sniff(data, archive=archive, **limits)
    assert str(caught.value) == caught.value.message
    return caught.value.message


# Flat formats: detected from the stream alone.


def test_it_detects_onnx_and_reports_its_header():
    found = sniff(artifacts.onnx_model_bytes(opset=15))

    assert found == DetectedFormat(
        ArtifactFormat.ONNX,
        Framework.ONNX,
        {"ir_version": 8, "opsets": {"": 15}, "producer": "hotswap-tests", "producer_version": ""},
    )
    json.dumps(found.details)


@pytest.mark.parametrize("chunk_size", [1, 7, MiB])
def test_it_gives_the_same_onnx_result_whatever_the_chunk_size(chunk_size):
    data = artifacts.onnx_model_bytes(inputs=(("a", [1, 3]), ("b", [1, 5])), batch_symbolic=True)

    assert sniff(data, chunk_size=chunk_size) == sniff(data)


def test_it_reports_every_opset_domain():
    model = onnx.load_from_string(artifacts.onnx_model_bytes())
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))

    assert sniff(model.SerializeToString()).details["opsets"] == {"": 17, "com.microsoft": 1}


def test_it_rejects_truncated_onnx():
    data = artifacts.onnx_model_bytes()

    message = rejection(data[: len(data) // 2], archive=False)

    assert message == f"content is not a valid ONNX model: truncated at byte {len(data) // 2}"


def test_it_rejects_onnx_with_trailing_garbage():
    data = artifacts.onnx_model_bytes()

    message = rejection(data + b"\x68junk", archive=False)

    assert message == f"content is not a valid ONNX model: unexpected field 13 (wire type 0) at byte {len(data)}"


def test_it_rejects_onnx_without_a_graph():
    model = onnx.load_from_string(artifacts.onnx_model_bytes())
    model.ClearField("graph")

    assert rejection(model.SerializeToString(), archive=False) == "content is not a valid ONNX model: it has no graph"


def test_it_detects_a_50_mb_onnx_model_in_constant_memory():
    data = artifacts.onnx_model_bytes(big_initializer_bytes=50 * MiB)
    chunks = [data[start : start + MiB] for start in range(0, len(data), MiB)]
    sniffer = FormatSniffer()

    tracemalloc.start()
    try:
        for chunk in chunks:
            sniffer.feed(chunk)
        found = sniffer.result(lambda: pytest.fail("open_reader was called for ONNX"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert found.format == ArtifactFormat.ONNX
    assert peak < 2 * MiB


def test_it_detects_a_coreml_mlmodel():
    found = sniff(artifacts.coreml_mlmodel_bytes())

    assert found == DetectedFormat(
        ArtifactFormat.COREML, Framework.COREML, {"specification_version": 5, "model_type": "neuralNetwork"}
    )


def test_it_rejects_a_truncated_coreml_mlmodel():
    message = rejection(artifacts.coreml_mlmodel_bytes()[:-1], archive=False)

    assert message == "content is not a valid Core ML model: truncated at byte 6"


def test_it_detects_tflite():
    found = sniff(artifacts.tflite_bytes(version=3))

    assert found == DetectedFormat(ArtifactFormat.TFLITE, Framework.TFLITE, {"root_offset": 16, "schema_version": 3})


def test_it_rejects_tflite_whose_root_table_is_outside_the_file():
    data = (4096).to_bytes(4, "little") + b"TFL3" + bytes(16)

    message = rejection(data, archive=False)

    assert message == "content is not a valid TFLite model: root table offset 4096 is outside the 24-byte file"


@pytest.mark.parametrize(
    "data",
    [b"hello, this is a text file\n", b"\x80\x04\x95\x10\x00\x00\x00", b"<!doctype html><html></html>", b"\x07" * 99],
    ids=["text", "pickle", "html", "random"],
)
def test_it_rejects_content_that_is_no_model(data):
    assert rejection(data, archive=False) == UNRECOGNISED


def test_it_rejects_random_bytes():
    data = np.random.default_rng(1).bytes(4096)

    assert rejection(data, archive=False) == UNRECOGNISED


def test_it_rejects_empty_content():
    assert rejection(b"", archive=False) == "the artifact is empty"


# ZIP archives: inspected through the stored copy.


def test_it_detects_a_zip_package_with_an_onnx_model():
    model = artifacts.onnx_model_bytes()
    manifest = {"model_file": "nets/model.onnx", "name": "detector"}

    found = sniff(artifacts.zip_package_bytes(model, model_file="nets/model.onnx", manifest=manifest), archive=True)

    assert found.format == ArtifactFormat.ZIP_PACKAGE
    assert found.framework == Framework.ONNX
    assert found.details == {
        "model_file": "nets/model.onnx",
        "inner_format": ArtifactFormat.ONNX,
        "entries": 2,
        "uncompressed_bytes": len(model) + len(json.dumps(manifest)),
        "manifest": manifest,
        "model": sniff(model).details,
    }


def test_it_detects_a_zip_package_with_a_big_onnx_model():
    found = sniff(artifacts.zip_package_bytes(artifacts.onnx_model_bytes(big_initializer_bytes=3 * MiB)), archive=True)

    assert (found.format, found.details["inner_format"]) == (ArtifactFormat.ZIP_PACKAGE, ArtifactFormat.ONNX)


@pytest.mark.parametrize(
    ("model", "model_file", "framework"),
    [
        (artifacts.tflite_bytes(), "model.tflite", Framework.TFLITE),
        (artifacts.coreml_mlmodel_bytes(), "model.mlmodel", Framework.COREML),
    ],
)
def test_it_detects_a_zip_package_with_other_inner_models(model, model_file, framework):
    found = sniff(artifacts.zip_package_bytes(model, model_file=model_file), archive=True)

    assert (found.format, found.framework) == (ArtifactFormat.ZIP_PACKAGE, framework)


def test_it_rejects_a_zip_without_manifest():
    message = rejection(artifacts.zip_bytes({"model.onnx": artifacts.onnx_model_bytes()}))

    assert message.startswith("a ZIP model package needs a manifest.json at its root naming its model_file")


def test_it_rejects_a_manifest_naming_a_missing_file():
    data = artifacts.zip_package_bytes(artifacts.onnx_model_bytes(), manifest={"model_file": "other.onnx"})

    assert rejection(data) == "manifest.json names model_file 'other.onnx', which is not in the archive"


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (b"{not json", "manifest.json is not valid JSON: "),
        ([1, 2], "manifest.json must be a JSON object"),
        ({"name": "x"}, "manifest.json must name the package's model_file"),
        ({"model_file": "../model.onnx"}, "manifest.json's model_file '../model.onnx' has a '..' component"),
    ],
)
def test_it_rejects_a_bad_manifest(manifest, expected):
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    data = artifacts.zip_bytes({"manifest.json": raw, "model.onnx": artifacts.onnx_model_bytes()})

    assert rejection(data).startswith(expected)


def test_it_rejects_a_huge_manifest():
    manifest = {"model_file": "model.onnx", "notes": "x" * 70_000}

    message = rejection(artifacts.zip_package_bytes(artifacts.onnx_model_bytes(), manifest=manifest))

    assert message == "manifest.json is larger than 65536 bytes"


def test_it_rejects_a_package_whose_model_file_is_no_model():
    data = artifacts.zip_package_bytes(b"just some text\n", model_file="model.onnx")

    assert rejection(data) == "model_file 'model.onnx' is not an ONNX, TFLite or Core ML model"


def test_it_rejects_a_package_whose_onnx_model_is_truncated():
    model = artifacts.onnx_model_bytes()

    message = rejection(artifacts.zip_package_bytes(model[:100]))

    assert message == (
        "model_file 'model.onnx' is not an ONNX, TFLite or Core ML model "
        "(content is not a valid ONNX model: truncated at byte 100)"
    )


def test_it_detects_a_pytorch_archive_from_names_without_unpickling():
    found = sniff(artifacts.pytorch_zip_bytes(), archive=True)

    assert found == DetectedFormat(
        ArtifactFormat.PYTORCH, Framework.PYTORCH, {"entries": 3, "uncompressed_bytes": 24, "prefix": "archive"}
    )


def test_it_rejects_a_pytorch_archive_whose_data_pkl_is_not_a_pickle():
    data = artifacts.zip_bytes({"archive/data.pkl": b"import os", "archive/version": b"3\n"})

    assert rejection(data) == "archive/data.pkl in the PyTorch archive is not a pickle"


def test_it_reads_only_a_zips_directory_and_the_heads_it_needs():
    data = artifacts.zip_bytes(
        {"archive/data.pkl": b"\x80\x02.", "archive/version": b"3\n", "archive/data/0": bytes(20 * MiB)},
        compression=zipfile.ZIP_STORED,
    )
    reader = _CountingReader(data)
    sniffer = FormatSniffer()
    sniffer.feed(data[:MiB])

    assert sniffer.result(lambda: reader).format == ArtifactFormat.PYTORCH
    assert reader.bytes_read < 100_000


@pytest.mark.parametrize("root", ["", "export/"])
def test_it_detects_a_savedmodel_zip(root):
    found = sniff(artifacts.savedmodel_zip_bytes(root=root), archive=True)

    assert (found.format, found.framework) == (ArtifactFormat.SAVEDMODEL, Framework.TENSORFLOW)
    assert found.details["root"] == root.rstrip("/")
    assert found.details["has_variables"] is True


def test_it_detects_a_coreml_mlpackage_zip():
    found = sniff(artifacts.mlpackage_zip_bytes(), archive=True)

    assert (found.format, found.framework) == (ArtifactFormat.COREML, Framework.COREML)
    assert found.details["root"] == "Model.mlpackage"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (artifacts.zip_traversal_bytes(), "ZIP entry '../evil.onnx' has a '..' component"),
        (artifacts.zip_absolute_path_bytes(), "ZIP entry '/etc/evil.onnx' is an absolute path"),
        (artifacts.zip_bytes({"C:/evil.onnx": b"x"}), "ZIP entry 'C:/evil.onnx' is an absolute path"),
        (artifacts.zip_bytes({"..\\evil.onnx": b"x"}), "ZIP entry '..\\\\evil.onnx' contains a backslash"),
    ],
    ids=["dotdot", "absolute", "drive", "backslash"],
)
def test_it_rejects_zip_entries_with_unsafe_paths(data, expected):
    assert rejection(data) == f"{expected}; archive entries must be plain relative paths"


def test_it_rejects_zip_symlinks():
    message = rejection(artifacts.zip_symlink_bytes())

    assert message == "ZIP entry 'model.onnx' is a symbolic link; links are not allowed"


def test_it_rejects_zip_bombs_before_extracting_anything():
    data = artifacts.zip_bomb_bytes()
    reader = _CountingReader(data)
    sniffer = FormatSniffer()
    sniffer.feed(data)

    with pytest.raises(ArtifactFormatError, match=r"ZIP entry 'model.onnx' expands more than 200x \(a zip bomb\?\)"):
        sniffer.result(lambda: reader)
    assert reader.bytes_read < 100_000


def test_it_rejects_encrypted_zip_entries():
    assert rejection(artifacts.zip_encrypted_bytes()) == "ZIP entry 'manifest.json' is encrypted"


@pytest.mark.parametrize("names", [("model.onnx", "model.onnx"), ("Model.onnx", "model.onnx")])
def test_it_rejects_duplicate_zip_entries(names):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we want
        for name in ("manifest.json", *names):
            archive.writestr(name, b"{}")

    assert rejection(buffer.getvalue()) == f"the ZIP archive has two entries named {names[1]!r}"


def test_it_rejects_zips_with_too_many_entries():
    data = artifacts.zip_bytes({f"f{i}": b"x" for i in range(5)})

    assert rejection(data, max_entries=4) == "the ZIP archive has 5 entries; the limit is 4"


def test_it_rejects_zips_expanding_beyond_the_limit():
    data = artifacts.zip_package_bytes(artifacts.onnx_model_bytes())

    assert rejection(data, max_uncompressed_bytes=100).startswith("the ZIP archive expands to ")


def test_it_rejects_a_truncated_zip():
    data = artifacts.savedmodel_zip_bytes()

    assert rejection(data[:-30]).startswith("the archive is corrupt or unsupported: ")


# Tar archives: SavedModels only.


def test_it_detects_a_savedmodel_tar():
    found = sniff(artifacts.savedmodel_tar_bytes(root="./"), archive=True)

    assert found == DetectedFormat(
        ArtifactFormat.SAVEDMODEL,
        Framework.TENSORFLOW,
        {"archive": "tar", "root": "", "entries": 3, "uncompressed_bytes": 84, "has_variables": True},
    )


def test_it_seeks_over_tar_bodies():
    data = artifacts.tar_bytes({"sm/saved_model.pb": b"\x08\x01", "sm/variables/variables.data": bytes(20 * MiB)})
    reader = _CountingReader(data)
    sniffer = FormatSniffer()
    sniffer.feed(data[:MiB])

    assert sniffer.result(lambda: reader).format == ArtifactFormat.SAVEDMODEL
    assert reader.bytes_read < 100_000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            artifacts.tar_bytes({"saved_model.pb": b""}, symlinks={"variables": "/etc"}),
            "tar entry 'variables' is a link; links are not allowed",
        ),
        (
            artifacts.tar_bytes({"saved_model.pb": b"", "../evil": b""}),
            "tar entry '../evil' has a '..' component; archive entries must be plain relative paths",
        ),
        (
            artifacts.tar_bytes({"model.onnx": b""}),
            "a tar archive must be a TensorFlow SavedModel, with saved_model.pb at its root or in its one top-level "
            "folder",
        ),
    ],
    ids=["symlink", "dotdot", "not-savedmodel"],
)
def test_it_rejects_unsafe_or_unknown_tars(data, expected):
    assert rejection(data) == expected


def test_it_rejects_tars_with_too_many_entries():
    assert rejection(artifacts.savedmodel_tar_bytes(), max_entries=2) == "the tar archive has more than 2 entries"


def test_it_rejects_gzipped_tars_with_advice():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.addfile(tarfile.TarInfo("saved_model.pb"))

    message = rejection(buffer.getvalue(), archive=False)

    assert "upload a SavedModel as .zip or as an uncompressed .tar" in message


# The convenience wrapper and the builders the suite relies on.


def test_it_detects_through_detect_format():
    data = artifacts.savedmodel_zip_bytes()

    found = detect_format(lambda: io.BytesIO(data), iter([data[:10], data[10:]]))

    assert found.format == ArtifactFormat.SAVEDMODEL


def test_it_builds_onnx_models_that_onnxruntime_runs():
    data = artifacts.onnx_model_bytes(
        inputs=(("image", [1, 3, 4, 4]), ("extra", [1, 5])),
        outputs=(("scores", [1, 2, 3]), ("box", [1, 4])),
        batch_symbolic=True,
    )
    onnx.checker.check_model(onnx.load_from_string(data))

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    scores, box = session.run(None, {"image": np.ones((2, 3, 4, 4), np.float32), "extra": np.ones((2, 5), np.float32)})

    assert (scores.shape, box.shape) == ((2, 2, 3), (2, 4))


@pytest.mark.parametrize(
    "build",
    [artifacts.savedmodel_zip_bytes, artifacts.savedmodel_tar_bytes, artifacts.pytorch_zip_bytes,
     lambda: artifacts.zip_package_bytes(artifacts.onnx_model_bytes()), artifacts.onnx_model_bytes],
)
def test_it_only_ever_raises_artifact_format_error_on_corrupt_content(build):
    rng = np.random.default_rng(7)
    original = build()
    for _ in range(200):
        data = bytearray(original[: rng.integers(1, len(original) + 1)])
        data[rng.integers(len(data))] = rng.integers(256)
        with contextlib.suppress(ArtifactFormatError):
            detect_format(lambda data=data: io.BytesIO(data), [bytes(data)])


# A stored copy (an upload session's object): the sniffer reads only what its walk needs.


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


@pytest.mark.parametrize("build", [lambda: artifacts.onnx_model_bytes(big_initializer_bytes=40 * MiB),
                                   artifacts.tflite_bytes, artifacts.savedmodel_zip_bytes])
def test_a_stored_copy_gives_what_the_stream_gives(build):
    data = build()
    streamed, stored = FormatSniffer(), FormatSniffer()
    streamed.feed(data)
    reader = _CountingReader(data)

    stored.feed_stored(reader, len(data))

    assert stored.result(lambda: io.BytesIO(data)) == streamed.result(lambda: io.BytesIO(data))
    assert reader.bytes_read <= 2 * MiB  # the 40 MiB graph is seeked over, not read


def test_a_stored_onnx_model_cut_short_is_refused_as_truncated():
    data = artifacts.onnx_model_bytes(big_initializer_bytes=4 * MiB)
    sniffer = FormatSniffer()

    sniffer.feed_stored(io.BytesIO(data[:-1000]), len(data) - 1000)

    with pytest.raises(ArtifactFormatError, match="truncated"):
        sniffer.result(lambda: io.BytesIO(data))
