"""Reads a ZIP model package's manifest and extracts only the files validation needs, safely."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

MANIFEST = "manifest.json"
_MANIFEST_BYTES = 64 * 1024
# The same bomb limits as formats.py applies at upload: the stored object is re-checked, not trusted.
MAX_EXTRACT_BYTES = 4 * 1024**3
_MAX_RATIO = 200
_RATIO_FLOOR = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1024 * 1024
# What zipfile raises on damaged archives: bad offsets, CRC mismatches, unsupported compression.
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError)


class PackageError(Exception):
    """The package is malformed or unsafe to extract; the message says why."""


def safe_member(name: str, what: str) -> str:
    """The normalised archive path, or PackageError if it could escape the extraction folder."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name):
        raise PackageError(f"{what} {name!r} is not a safe relative path")
    normal = posixpath.normpath(name)
    if normal in (".", "..") or normal.startswith("../"):
        raise PackageError(f"{what} {name!r} points outside the package")
    return normal


class ModelPackage:
    """A ZIP model package opened read-only, from which single named members are extracted."""

    def __init__(self, path: str, *, max_bytes: int = MAX_EXTRACT_BYTES):
        try:
            self._archive = zipfile.ZipFile(path)
        except _CORRUPT as exc:
            raise PackageError(f"the archive is corrupt: {exc}") from exc
        self._max_bytes = max_bytes
        # Unsafe names are never indexed, so they can never be extracted.
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in self._archive.infolist():
            try:
                self._members[safe_member(info.filename, "entry")] = info
            except PackageError:
                continue

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> ModelPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_file(self) -> str:
        info = self._member(MANIFEST, "manifest.json")
        self._check_entry(MANIFEST, info)
        if info.file_size > _MANIFEST_BYTES:
            raise PackageError(f"manifest.json is larger than {_MANIFEST_BYTES} bytes")
        try:
            with self._archive.open(info) as handle:
                raw = handle.read(_MANIFEST_BYTES + 1)
        except _CORRUPT as exc:
            raise PackageError(f"manifest.json cannot be read: {exc}") from exc
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise PackageError(f"manifest.json is not valid JSON: {exc}") from exc
        model_file = manifest.get("model_file") if isinstance(manifest, dict) else None
        if not isinstance(model_file, str) or not model_file:
            raise PackageError("manifest.json must be an object naming the package's model_file")
        return safe_member(model_file, "manifest.json's model_file")

    def extract(self, member: str, dest_root: Path) -> Path:
        """Writes one member to dest_root/member and returns its path; nothing else is ever written."""
        info = self._member(member, "file")
        self._check_entry(member, info)
        if info.file_size > self._max_bytes:
            raise PackageError(f"{member!r} is {info.file_size} bytes; the limit is {self._max_bytes}")
        if info.file_size > _RATIO_FLOOR and info.file_size > _MAX_RATIO * info.compress_size:
            raise PackageError(f"{member!r} expands more than {_MAX_RATIO}x (a zip bomb?)")
        target = dest_root.joinpath(*member.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL | O_NOFOLLOW: never overwrite, never write through a link planted by an earlier member.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out, self._archive.open(info) as source:
                shutil.copyfileobj(source, out, _CHUNK)  # zipfile stops at file_size and checks the CRC
        except _CORRUPT as exc:
            raise PackageError(f"{member!r} cannot be extracted: {exc}") from exc
        return target

    @staticmethod
    def _check_entry(name: str, info: zipfile.ZipInfo) -> None:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PackageError(f"{name!r} is a symbolic link; links are not allowed")
        if info.is_dir():
            raise PackageError(f"{name!r} is a folder, not a file")
        if info.flag_bits & 0x1:
            raise PackageError(f"{name!r} is encrypted")

    def _member(self, name: str, what: str) -> zipfile.ZipInfo:
        info = self._members.get(name)
        if info is None:
            raise PackageError(f"the package has no {what} {name!r}")
        return info
