"""Extracting a ZIP package's model file: only that file, only inside the extraction folder."""

from __future__ import annotations

import pytest

from models_app.validation import Outcome
from models_app.validation.package import ModelPackage, PackageError
from models_app.validation.pipeline import run_pipeline
from tests.artifacts import (
    onnx_model_bytes,
    zip_bytes,
    zip_encrypted_bytes,
    zip_package_bytes,
    zip_symlink_bytes,
    zip_traversal_bytes,
)


@pytest.mark.parametrize(
    ("package", "message"),
    [
        (zip_package_bytes(b"x", model_file="../model.onnx"), "points outside the package"),
        (zip_package_bytes(b"x", model_file="/etc/passwd"), "not a safe relative path"),
        (zip_package_bytes(b"x", model_file="C:model.onnx"), "not a safe relative path"),
        (zip_package_bytes(b"x", manifest={"model": "m.onnx"}), "must be an object naming the package's model_file"),
        (zip_package_bytes(b"x", manifest=b"{nope"), "not valid JSON"),
        (zip_bytes({"model.onnx": b"x"}), "no manifest.json"),
        (zip_traversal_bytes(), "has no file 'model.onnx'"),
        (zip_symlink_bytes(), "symbolic link"),
        (zip_encrypted_bytes(), "encrypted"),
    ],
)
def test_it_refuses_unsafe_or_broken_packages(write_file, tmp_path, package, message):
    with ModelPackage(write_file("package.zip", package)) as opened, pytest.raises(PackageError, match=message):
        opened.extract(opened.model_file(), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_it_extracts_only_the_model_file(write_file, tmp_path):
    package = zip_package_bytes(onnx_model_bytes(), model_file="./nets/m.onnx", extra_entries={"other.bin": b"x"})

    with ModelPackage(write_file("package.zip", package)) as opened:
        path = opened.extract(opened.model_file(), tmp_path / "out")

    assert path == tmp_path / "out" / "nets" / "m.onnx"
    assert [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()] == \
        ["nets/m.onnx"]


def test_it_fails_the_format_step_of_an_unsafe_package(write_file, make_config, tmp_path):
    result = run_pipeline(write_file("package.zip", zip_traversal_bytes()), make_config(detected_format="zip_package"),
                          work_dir=tmp_path)

    assert result.outcome == Outcome.FAILED
    assert result.step("format").detail == "the ZIP package is unusable: the package has no file 'model.onnx'"
