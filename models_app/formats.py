"""Detects a model artifact's format from its content, safely and in constant memory while it streams."""

from __future__ import annotations

import contextlib
import json
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from models_app.models import ArtifactFormat, Framework

UNRECOGNISED = (
    "content is not a recognised model format (ONNX, ZIP model package, TFLite, SavedModel, PyTorch, Core ML)"
)
COMPRESSED_TAR = (
    "compressed archives (.tar.gz, .tar.bz2, .tar.xz) are not accepted: upload a SavedModel as .zip or as an "
    "uncompressed .tar, whose entries can be listed and checked without decompressing the whole archive"
)
_HEAD_BYTES = 64 * 1024
_CHUNK = 1024 * 1024
# Budget for buffering the small top-level protobuf fields we report (producer, opset_import).
_SMALL_FIELDS_BYTES = 64 * 1024
_MAX_OPSETS = 256
_MANIFEST_BYTES = 64 * 1024
# A ZIP central directory or tar metadata header larger than this is hostile: 10k entries fit in ~2 MiB.
_MAX_READ = 4 * 1024 * 1024
# Entries this small cannot bomb anything, and tiny text files legitimately compress beyond any sane ratio.
_RATIO_FLOOR = 1024 * 1024
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_DRIVE = re.compile(r"^[A-Za-z]:")
# What zipfile and tarfile raise on damaged archives (bad offsets, short records, unknown compression).
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError, ValueError, struct.error)

# Top-level fields of onnx.ModelProto (onnx/onnx.proto) and their wire types.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
# Core ML Model (coremltools Model.proto): specificationVersion, description, isUpdatable; the model type
# is a oneof whose fields are all messages numbered from 200 up.
_COREML_FIELDS = {1: 0, 2: 2, 10: 0}
_COREML_TYPES = {
    200: "pipelineClassifier", 201: "pipelineRegressor", 202: "pipeline", 300: "glmRegressor",
    303: "neuralNetworkRegressor", 400: "glmClassifier", 403: "neuralNetworkClassifier",
    500: "neuralNetwork", 502: "mlProgram", 555: "customModel", 556: "linkedModel",
}  # fmt: skip


class ArtifactFormatError(Exception):
    """Content is not a supported or safe model artifact; the message says why and is shown to the API client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class DetectedFormat:
    """What an artifact is: its ArtifactFormat, the Framework it implies, and JSON-serialisable facts."""

    format: str
    framework: str
    details: dict


class _ProtoWalker:
    """Walks the top-level fields of a protobuf stream, skipping payloads and keeping only a few small fields."""

    def __init__(self) -> None:
        self.offset = 0
        self.first_tag: tuple[int, int] | None = None
        self.onnx_error: str | None = None
        self.coreml_error: str | None = None
        self.seen: set[int] = set()  # only known header field numbers, so it stays tiny
        self.coreml_type: int | None = None
        self.version: int | None = None  # field 1: ONNX ir_version, Core ML specificationVersion
        self.producer = ""
        self.producer_version = ""
        self.opsets: dict[str, int] = {}
        self._budget = _SMALL_FIELDS_BYTES
        self._want = "tag"  # what the next varint is: "tag", "value" or "length"
        self._varint = self._shift = 0
        self._field = self._start = self._skip = 0
        self._capture: bytearray | None = None

    @property
    def stopped(self) -> bool:
        return self.onnx_error is not None and self.coreml_error is not None

    def feed(self, chunk: bytes) -> None:
        pos, end = 0, len(chunk)
        while pos < end and not self.stopped:
            if self._skip:
                # Payloads (a 2 GB graph) are skipped arithmetically, across chunks.
                take = min(self._skip, end - pos)
                if self._capture is not None:
                    self._capture += chunk[pos : pos + take]
                pos, self.offset, self._skip = pos + take, self.offset + take, self._skip - take
                if not self._skip:
                    self._payload_done()
                continue
            byte = chunk[pos]
            pos, self.offset = pos + 1, self.offset + 1
            self._varint |= (byte & 0x7F) << self._shift
            self._shift += 7
            if byte & 0x80:
                if self._shift >= 70:
                    self._fail(f"varint longer than 10 bytes at byte {self._start}")
                continue
            value, self._varint, self._shift = self._varint, 0, 0
            if self._want == "tag":
                self._on_tag(value)
            elif self._want == "value":
                self._on_value(value)
            else:
                self._on_length(value)

    def _fail(self, reason: str) -> None:
        self.onnx_error = self.onnx_error or reason
        self.coreml_error = self.coreml_error or reason

    def _on_tag(self, tag: int) -> None:
        field, wire = tag >> 3, tag & 7
        self._field = field
        self.first_tag = self.first_tag or (field, wire)
        if field == 0 or wire not in (0, 1, 2, 5):
            return self._fail(f"invalid field tag at byte {self._start}")
        where = f"unexpected field {field} (wire type {wire}) at byte {self._start}"
        if self.onnx_error is None and _ONNX_FIELDS.get(field) != wire:
            self.onnx_error = where
        if self.coreml_error is None and _COREML_FIELDS.get(field) != wire and not (field >= 200 and wire == 2):
            self.coreml_error = where
        if field in _ONNX_FIELDS or field in _COREML_FIELDS:
            self.seen.add(field)
        if field >= 200 and self.coreml_error is None:
            self.coreml_type = self.coreml_type or field
        if wire == 0:
            self._want = "value"
        elif wire == 2:
            self._want = "length"
        else:
            self._skip = 8 if wire == 1 else 4
        return None

    def _on_value(self, value: int) -> None:
        if self._field == 1:
            self.version = value - (1 << 64) if value >= 1 << 63 else value
        self._field_done()

    def _on_length(self, length: int) -> None:
        wanted = self._field in (2, 3, 8) and self.onnx_error is None
        if wanted and length <= self._budget:
            self._budget -= length
            self._capture = bytearray()
        self._skip = length
        if not length:
            self._payload_done()

    def _payload_done(self) -> None:
        data, self._capture = self._capture, None
        if data is not None and self._field == 2:
            self.producer = data.decode("utf-8", "replace")
        elif data is not None and self._field == 3:
            self.producer_version = data.decode("utf-8", "replace")
        elif data is not None:
            self._add_opset(bytes(data))
        self._field_done()

    def _add_opset(self, data: bytes) -> None:
        try:
            domain, version = _decode_opset(data)
        except ValueError:
            self.onnx_error = f"malformed opset_import at byte {self._start}"
            return
        if len(self.opsets) < _MAX_OPSETS:
            self.opsets[domain] = version

    def _field_done(self) -> None:
        self._want, self._start = "tag", self.offset

    def skippable(self) -> int:
        """Bytes of a payload the walk will not look at: a reader of a stored copy may seek over them."""
        return self._skip if self._capture is None else 0

    def skip(self, count: int) -> None:
        self.offset, self._skip = self.offset + count, self._skip - count
        if not self._skip:
            self._payload_done()

    def _at_boundary(self) -> bool:
        return self._want == "tag" and not self._shift and not self._skip

    def model(self) -> DetectedFormat | None:
        """The ONNX or Core ML model the whole stream held, or None."""
        if not self._at_boundary() or (self.version or 0) <= 0:
            return None
        if self.onnx_error is None and 7 in self.seen:
            details = {"ir_version": self.version, "opsets": self.opsets, "producer": self.producer,
                       "producer_version": self.producer_version}
            return DetectedFormat(ArtifactFormat.ONNX.value, Framework.ONNX.value, details)
        if self.coreml_error is None and self.coreml_type is not None:
            model_type = _COREML_TYPES.get(self.coreml_type, f"field {self.coreml_type}")
            details = {"specification_version": self.version, "model_type": model_type}
            return DetectedFormat(ArtifactFormat.COREML.value, Framework.COREML.value, details)
        return None

    def failure(self) -> str | None:
        """Why a stream that starts like ONNX or Core ML (field 1, a varint) isn't one; None if it never did."""
        if self.first_tag != (1, 0):
            return None
        coreml = self.onnx_error is not None and (self.coreml_error is None or self.coreml_type is not None)
        kind, error = ("Core ML model", self.coreml_error) if coreml else ("ONNX model", self.onnx_error)
        if error:
            reason = error
        elif not self._at_boundary():
            reason = f"truncated at byte {self.offset}"
        elif (self.version or 0) <= 0:
            reason = "specificationVersion must be positive" if coreml else "ir_version must be positive"
        else:
            reason = "it has no model type field" if coreml else "it has no graph"
        return f"content is not a valid {kind}: {reason}"


def _tflite(head: bytes, size: int) -> DetectedFormat:
    (root,) = struct.unpack_from("<I", head)
    if not 8 <= root <= size - 4:
        raise ArtifactFormatError(f"content is not a valid TFLite model: root table offset {root} is outside the "
                                  f"{size}-byte file")
    details: dict = {"root_offset": root}
    # Model.version is field 0 of the root table; reported when the head holds it, informative only.
    with contextlib.suppress(struct.error):
        vtable = root - struct.unpack_from("<i", head, root)[0]
        if vtable >= 0:
            vtable_size, _, field0 = struct.unpack_from("<HHH", head, vtable)
            if vtable_size >= 6 and field0:
                details["schema_version"] = struct.unpack_from("<I", head, root + field0)[0]
    return DetectedFormat(ArtifactFormat.TFLITE.value, Framework.TFLITE.value, details)


def _safe_path(name: str, what: str) -> str:
    """The entry's normalised relative path; raises if extracting it could land outside the target folder."""
    parts = name.split("/")
    if name.startswith("/") or _DRIVE.match(name):
        problem = "is an absolute path"
    elif ".." in parts:
        problem = "has a '..' component"
    elif "\\" in name:
        problem = "contains a backslash"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    else:
        return "/".join(part for part in parts if part not in ("", "."))
    raise ArtifactFormatError(f"{what} {name!r} {problem}; archive entries must be plain relative paths")


def _common_root(paths: Iterable[str]) -> str:
    """'' when an entry sits at the archive's root, else 'folder/' when every entry is inside that one folder."""
    paths = list(paths)
    tops = {path.split("/", 1)[0] for path in paths}
    return f"{tops.pop()}/" if len(tops) == 1 and all("/" in path for path in paths) else ""


class _CappedReader:
    """Passes reads through to the stored artifact but refuses any single read larger than _MAX_READ."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._size = raw.seek(0, 2)
        raw.seek(0)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._raw.tell())
        if n > _MAX_READ:
            raise ArtifactFormatError(f"archive metadata is too large (a single {n}-byte record)")
        return self._raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True


class FormatSniffer:
    """Detects an artifact's format from chunks fed while it uploads, then from the stored copy for archives."""

    def __init__(self, *, max_uncompressed_bytes: int = 4 * 1024**3, max_ratio: int = 200, max_entries: int = 10_000):
        self.max_uncompressed_bytes = max_uncompressed_bytes
        self.max_ratio = max_ratio
        self.max_entries = max_entries
        self._head = bytearray()
        self._size = 0
        self._walker = _ProtoWalker()

    def feed(self, chunk: bytes) -> None:
        """Takes the next chunk; never raises, so the upload streams on and result() reports the verdict."""
        if len(self._head) < _HEAD_BYTES:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
        self._size += len(chunk)
        self._walker.feed(chunk)

    def feed_stored(self, reader: BinaryIO, size: int) -> None:
        """Feeds a stored copy instead of a stream, reading only what the walk needs (it seeks over payloads).

        A multi-GB ONNX model is one graph field: a few hundred KB are read, not the object.
        """
        position = 0
        while position < size:
            skip = min(self._walker.skippable(), size - position) if len(self._head) >= _HEAD_BYTES else 0
            if skip:
                self._walker.skip(skip)
                position += skip
                self._size += skip
                reader.seek(position)
                continue
            chunk = reader.read(min(_CHUNK, size - position))
            if not chunk:
                break
            self.feed(chunk)
            position += len(chunk)
            if self._walker.stopped and len(self._head) >= _HEAD_BYTES:
                break  # not a protobuf model: the head decides, and archives are opened by result()
        self._size = size

    def result(self, open_reader: Callable[[], BinaryIO]) -> DetectedFormat:
        """The detected format; open_reader is only called for archives. Raises ArtifactFormatError."""
        if not self._size:
            raise ArtifactFormatError("the artifact is empty")
        found = self._flat(self._size)
        if found is not None:
            return found
        if self._head.startswith(_ZIP_MAGICS):
            return self._archive(open_reader, self._zip)
        if self._head[257:262] == b"ustar":
            return self._archive(open_reader, self._tar)
        if self._head.startswith(_COMPRESSED_MAGICS):
            raise ArtifactFormatError(COMPRESSED_TAR)
        raise ArtifactFormatError(self._walker.failure() or UNRECOGNISED)

    def _flat(self, size: int) -> DetectedFormat | None:
        """ONNX, Core ML .mlmodel or TFLite, from what feed() saw; None if it is none of them."""
        found = self._walker.model()
        if found is None and self._head[4:8] == b"TFL3":
            found = _tflite(bytes(self._head), size)
        return found

    def _archive(
        self, open_reader: Callable[[], BinaryIO], inspect: Callable[[BinaryIO], DetectedFormat]
    ) -> DetectedFormat:
        with contextlib.closing(open_reader()) as raw:
            try:
                return inspect(_CappedReader(raw))  # type: ignore[arg-type]
            except _CORRUPT as exc:
                raise ArtifactFormatError(f"the archive is corrupt or unsupported: {exc}") from exc

    def _zip(self, reader: BinaryIO) -> DetectedFormat:
        with zipfile.ZipFile(reader) as archive:
            infos = archive.infolist()
            if len(infos) > self.max_entries:
                raise ArtifactFormatError(f"the ZIP archive has {len(infos)} entries; the limit is {self.max_entries}")
            files: dict[str, zipfile.ZipInfo] = {}
            folded: set[str] = set()
            total = 0
            for info in infos:
                path = _safe_path(info.orig_filename, "ZIP entry")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ArtifactFormatError(f"ZIP entry {info.filename!r} is a symbolic link; links are not allowed")
                if info.flag_bits & 0x1:
                    raise ArtifactFormatError(f"ZIP entry {info.filename!r} is encrypted")
                if info.file_size > _RATIO_FLOOR and info.file_size > self.max_ratio * info.compress_size:
                    raise ArtifactFormatError(f"ZIP entry {info.filename!r} expands more than {self.max_ratio}x "
                                              f"(a zip bomb?)")
                total += info.file_size
                if info.is_dir() or not path:
                    continue
                # Case-insensitive: on a device's case-insensitive disk these would overwrite each other.
                if path.casefold() in folded:
                    raise ArtifactFormatError(f"the ZIP archive has two entries named {path!r}")
                folded.add(path.casefold())
                files[path] = info
            if total > self.max_uncompressed_bytes:
                raise ArtifactFormatError(f"the ZIP archive expands to {total} bytes; the limit is "
                                          f"{self.max_uncompressed_bytes}")
            return self._zip_layout(archive, files, {"entries": len(infos), "uncompressed_bytes": total})

    def _zip_layout(self, archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], facts: dict) -> DetectedFormat:
        root = _common_root(files)
        if "manifest.json" in files:
            return self._package(archive, files, facts)
        if root and f"{root}data.pkl" in files and ({f"{root}version", f"{root}.data/version"} & files.keys()):
            # Only the names and the pickle's protocol byte are looked at: unpickling runs arbitrary code.
            with archive.open(files[f"{root}data.pkl"]) as pickle_head:
                if pickle_head.read(1) != b"\x80":
                    raise ArtifactFormatError(f"{root}data.pkl in the PyTorch archive is not a pickle")
            return DetectedFormat(ArtifactFormat.PYTORCH.value, Framework.PYTORCH.value,
                                  {**facts, "prefix": root.rstrip("/")})
        if f"{root}saved_model.pb" in files:
            has_variables = any(path.startswith(f"{root}variables/") for path in files)
            return DetectedFormat(ArtifactFormat.SAVEDMODEL.value, Framework.TENSORFLOW.value,
                                  {**facts, "archive": "zip", "root": root.rstrip("/"), "has_variables": has_variables})
        if f"{root}Manifest.json" in files and any(path.startswith(f"{root}Data/com.apple.CoreML/") for path in files):
            return DetectedFormat(ArtifactFormat.COREML.value, Framework.COREML.value,
                                  {**facts, "package": "mlpackage", "root": root.rstrip("/")})
        raise ArtifactFormatError("a ZIP model package needs a manifest.json at its root naming its model_file "
                                  "(or must be a PyTorch, SavedModel or Core ML .mlpackage archive)")

    def _package(self, archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], facts: dict) -> DetectedFormat:
        if files["manifest.json"].file_size > _MANIFEST_BYTES:
            raise ArtifactFormatError(f"manifest.json is larger than {_MANIFEST_BYTES} bytes")
        with archive.open(files["manifest.json"]) as handle:
            raw = handle.read(_MANIFEST_BYTES + 1)
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise ArtifactFormatError(f"manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise ArtifactFormatError("manifest.json must be a JSON object")
        model_file = manifest.get("model_file")
        if not isinstance(model_file, str) or not model_file:
            raise ArtifactFormatError("manifest.json must name the package's model_file")
        path = _safe_path(model_file, "manifest.json's model_file")
        if path not in files:
            raise ArtifactFormatError(f"manifest.json names model_file {model_file!r}, which is not in the archive")
        inner = FormatSniffer()
        with archive.open(files[path]) as entry:
            # Bounded by the bomb checks above; a stream that stopped looking like protobuf needs only its head.
            while not inner._walker.stopped and (chunk := entry.read(_CHUNK)):
                inner.feed(chunk)
        found = inner._flat(files[path].file_size)
        if found is None:
            why = inner._walker.failure()
            raise ArtifactFormatError(f"model_file {path!r} is not an ONNX, TFLite or Core ML model"
                                      + (f" ({why})" if why else ""))
        details = {"model_file": path, "inner_format": found.format, **facts, "manifest": manifest,
                   "model": found.details}
        return DetectedFormat(ArtifactFormat.ZIP_PACKAGE.value, found.framework, details)

    def _tar(self, reader: BinaryIO) -> DetectedFormat:
        files: set[str] = set()
        folded: set[str] = set()
        count = total = 0
        # Mode "r:" walks the 512-byte headers and seeks over bodies; _CappedReader bounds long-name headers.
        with tarfile.open(fileobj=reader, mode="r:") as archive:
            for member in archive:
                count += 1
                if count > self.max_entries:
                    raise ArtifactFormatError(f"the tar archive has more than {self.max_entries} entries")
                if member.issym() or member.islnk():
                    raise ArtifactFormatError(f"tar entry {member.name!r} is a link; links are not allowed")
                if not (member.isreg() or member.isdir()):
                    raise ArtifactFormatError(f"tar entry {member.name!r} is a device or FIFO, not a file")
                path = _safe_path(member.name, "tar entry")
                total += member.size
                if total > self.max_uncompressed_bytes:
                    raise ArtifactFormatError(f"the tar archive holds more than {self.max_uncompressed_bytes} bytes")
                if member.isreg() and path:
                    if path.casefold() in folded:
                        raise ArtifactFormatError(f"the tar archive has two entries named {path!r}")
                    folded.add(path.casefold())
                    files.add(path)
        root = _common_root(files)
        if f"{root}saved_model.pb" not in files:
            raise ArtifactFormatError("a tar archive must be a TensorFlow SavedModel, with saved_model.pb at its root "
                                      "or in its one top-level folder")
        details = {"archive": "tar", "root": root.rstrip("/"), "entries": count, "uncompressed_bytes": total,
                   "has_variables": any(path.startswith(f"{root}variables/") for path in files)}
        return DetectedFormat(ArtifactFormat.SAVEDMODEL.value, Framework.TENSORFLOW.value, details)


def detect_format(open_reader: Callable[[], BinaryIO], chunks: Iterable[bytes]) -> DetectedFormat:
    """Convenience: feed all chunks then result()."""
    sniffer = FormatSniffer()
    for chunk in chunks:
        sniffer.feed(chunk)
    return sniffer.result(open_reader)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _decode_opset(data: bytes) -> tuple[str, int]:
    """OperatorSetIdProto {domain = 1 (string), version = 2 (int64)}, decoded by hand.

    Hand-decoding keeps onnx (and numpy, ~45 MB) out of the web workers that sniff uploads.
    """
    domain, version, pos = "", 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 2:
                version = value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            if field == 1:
                domain = data[pos : pos + length].decode("utf-8")
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated field")
    return domain, version
