"""Upload sessions: resumable uploads whose bytes go straight to storage, and the one state machine of a session.

open ──complete()──▶ completed (its ModelVersion exists, its object is stored, its SHA-256 not yet verified)
  ├───abort()─────▶ aborted   (by its owner, or because the assembled bytes were refused; nothing stays stored)
  └───expiry──────▶ expired   (past expires_at: the beat task, or the next call, aborts its parts)

The server never touches the bytes of an S3 session: the client PUTs each part to a presigned UploadPart URL,
the session's parts are what S3's ListParts says, and the validation worker hashes the assembled object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from hotswap.exceptions import ApplicationError, ConflictError, NotFoundError
from hotswap.observability import tracing
from models_app import services
from models_app.formats import FormatSniffer
from models_app.models import AIModel, ModelVersion, UploadSession
from models_app.storage import ArtifactMissingError, ArtifactStore, artifact_store, new_artifact_key

logger = logging.getLogger(__name__)

S = UploadSession.Status
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts in one upload
# Target status -> the statuses it may be reached from: only an open session ever ends, and only once.
TRANSITIONS_FROM: dict[str, set[str]] = {S.COMPLETED: {S.OPEN}, S.ABORTED: {S.OPEN}, S.EXPIRED: {S.OPEN}}


def _session_end(session: UploadSession, *, to: str, **fields) -> bool:
    """Moves a session to `to` if its current status allows it (conditional UPDATE); False: it had already ended."""
    now = timezone.now()
    moved = UploadSession.objects.filter(pk=session.pk, status__in=TRANSITIONS_FROM[to]).update(
        status=to, finished_at=now, **fields) == 1
    session.refresh_from_db()
    return moved


def part_size_for(size: int) -> int:
    """UPLOAD_PART_BYTES, raised (in whole MiB) for files that would need more than S3's 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(settings.UPLOAD_PART_BYTES, MIN_PART_BYTES, -(-needed // mib) * mib)


@dataclass(frozen=True)
class SessionView:
    """A session with the parts its store holds (numbers of the parts stored at their exact size)."""

    session: UploadSession
    parts_done: list[int]


def upload_session_start(*, owner, name: str, version: str, size: int, sha256: str, filename: str,
                         metadata: dict) -> tuple[SessionView, bool]:
    """A new session (True), or the caller's open one for the same name+version+sha256+size (False: resume).

    When that version already exists with these bytes, answers a completed session pointing at it: a re-run
    after a finished upload has nothing to send.
    """
    sha256 = sha256.lower()
    if size > settings.ARTIFACT_MAX_BYTES:
        raise ApplicationError(f"The artifact is larger than the limit of {settings.ARTIFACT_MAX_BYTES} bytes.",
                               code="ARTIFACT_TOO_LARGE", extra={"max_bytes": settings.ARTIFACT_MAX_BYTES},
                               details=[{"field": "size", "message": f"At most {settings.ARTIFACT_MAX_BYTES}."}])
    existing = services.existing_version(name, version, sha256)  # VERSION_EXISTS for other bytes
    if existing is not None:
        done = UploadSession.objects.create(
            owner=owner, name=name, version=version, size=size, sha256=sha256, filename=filename, metadata=metadata,
            part_size=part_size_for(size), storage=_kind(artifact_store()), storage_key=new_artifact_key(),
            status=S.COMPLETED, expires_at=timezone.now(), finished_at=timezone.now(), model_version=existing)
        return SessionView(done, []), False
    services.framework_check(AIModel.objects.filter(name=name).first(), metadata["framework"])
    resumable = UploadSession.objects.filter(owner=owner, name=name, version=version, sha256=sha256, size=size,
                                             status=S.OPEN).first()
    if resumable is not None:
        if not _expired(resumable):
            return upload_session_view(resumable), False
        _expire(resumable)
    store = artifact_store()
    key = new_artifact_key()
    upload_id = store.multipart_start(key)
    try:
        with transaction.atomic():
            session = UploadSession.objects.create(
                owner=owner, name=name, version=version, size=size, sha256=sha256, filename=filename[:255],
                metadata=metadata, part_size=part_size_for(size), storage=_kind(store), storage_key=key,
                upload_id=upload_id, expires_at=timezone.now() + timedelta(hours=settings.UPLOAD_SESSION_HOURS))
    except IntegrityError:
        # The same client's parallel start won the race: resume that one, leave nothing of this one.
        store.multipart_discard(key, upload_id)
        return upload_session_view(UploadSession.objects.get(
            owner=owner, name=name, version=version, sha256=sha256, size=size, status=S.OPEN)), False
    logger.info("upload session started", extra={"session": str(session.pk), "model_id": f"{name}-{version}",
                                                 "size": size})
    return SessionView(session, []), True


def _kind(store: ArtifactStore) -> str:
    return UploadSession.Storage.S3 if store.is_s3 else UploadSession.Storage.LOCAL


def upload_session_get(*, owner, session_id) -> UploadSession:
    """The caller's session; another user's is as unknown as a session that never was (404)."""
    session = UploadSession.objects.filter(pk=session_id, owner=owner).first()
    if session is None:
        raise NotFoundError("No such upload session.", code="UPLOAD_NOT_FOUND")
    return session


def upload_session_view(session: UploadSession) -> SessionView:
    """The session with its stored parts (asked of the store); an open one past its expiry is expired first."""
    if _expired(session):
        _expire(session)
    if session.status == S.COMPLETED:
        return SessionView(session, list(range(1, session.part_count + 1)))
    if session.status != S.OPEN:
        return SessionView(session, [])
    return SessionView(session, sorted(n for n, size in _parts_stored(session).items()
                                       if 1 <= n <= session.part_count and size == session.part_bytes(n)))


def _parts_stored(session: UploadSession) -> dict[int, int]:
    try:
        return artifact_store().parts_stored(session.storage_key, session.upload_id, session.part_bytes)
    except ArtifactMissingError:
        return {}  # the store no longer knows the upload (aborted behind our back): nothing is there


def _expired(session: UploadSession) -> bool:
    return session.status == S.OPEN and session.expires_at <= timezone.now()


def _storage_discard(session: UploadSession, store: ArtifactStore) -> None:
    """Deletes whatever a session that made no version of its own stored: its parts, and an assembled object."""
    store.multipart_discard(session.storage_key, session.upload_id)
    try:
        store.delete(session.storage_key)  # nothing there is the usual case, and deleting nothing is fine
    except ApplicationError:
        logger.error("could not delete %s of ended upload session %s", session.storage_key, session.pk)


def _expire(session: UploadSession) -> bool:
    if not _session_end(session, to=S.EXPIRED):
        return False
    _storage_discard(session, artifact_store())
    logger.info("upload session expired", extra={"session": str(session.pk)})
    return True


def _require_open(session: UploadSession) -> None:
    """Refuses any further step of a session that has ended, saying how it ended."""
    if _expired(session):
        _expire(session)
    if session.status == S.OPEN:
        return
    if session.status == S.EXPIRED:
        raise ApplicationError(
            f"This upload session expired at {session.expires_at.isoformat()} and its parts were deleted; start "
            "the upload again.", code="UPLOAD_EXPIRED", status_code=410)
    if session.status == S.COMPLETED:
        model_id = session.model_version.model_id if session.model_version else f"{session.name}-{session.version}"
        raise ConflictError(f"This upload session is already completed: it made {model_id}.",
                            code="UPLOAD_COMPLETED", extra={"model_id": model_id})
    raise ConflictError("This upload session was aborted and its parts deleted; start the upload again.",
                        code="UPLOAD_ABORTED")


def _numbers_check(session: UploadSession, numbers: Iterable[int]) -> list[int]:
    numbers = list(numbers)
    wrong = [n for n in numbers if not 1 <= n <= session.part_count]
    if wrong:
        raise ApplicationError(
            f"This upload has parts 1 to {session.part_count}.", code="VALIDATION_ERROR",
            details=[{"field": "numbers", "message": f"Part {n} is not between 1 and {session.part_count}."}
                     for n in wrong])
    if len(set(numbers)) != len(numbers):
        raise ApplicationError("Each part number once per request.", code="VALIDATION_ERROR",
                               details=[{"field": "numbers", "message": "Repeated part numbers."}])
    return numbers


@dataclass(frozen=True)
class PartTarget:
    number: int
    size: int
    url: str
    auth: bool


def upload_session_part_targets(*, session: UploadSession, numbers: Iterable[int],
                                local_url) -> tuple[list[PartTarget], object]:
    """Where to PUT each part, and until when: presigned S3 URLs, or (local storage) the API's part endpoint.

    Parts may go in any order and in parallel; a part sent again replaces the earlier copy.
    """
    _require_open(session)
    numbers = _numbers_check(session, numbers)
    if session.storage == UploadSession.Storage.LOCAL:
        return [PartTarget(n, session.part_bytes(n), local_url(n), True) for n in numbers], session.expires_at
    # Never past the session's own end: the expiry task aborts the upload then.
    expires_in = int(min(settings.UPLOAD_PART_URL_EXPIRY_SECONDS,
                         (session.expires_at - timezone.now()).total_seconds()))
    store = artifact_store()
    targets = [PartTarget(n, session.part_bytes(n), store.part_upload_url(
        session.storage_key, session.upload_id, number=n, size=session.part_bytes(n), expires_in=expires_in), False)
        for n in numbers]
    return targets, timezone.now() + timedelta(seconds=expires_in)


def upload_session_part_receive(*, session: UploadSession, number: int, length: int | None,
                                chunks: Iterator[bytes]) -> int:
    """Local storage: stores part `number` from the request body; a body not exactly the part's size is refused."""
    _require_open(session)
    if session.storage != UploadSession.Storage.LOCAL:
        raise ConflictError("This session uploads to S3: PUT the part to the URL that POST .../parts gave.",
                            code="UPLOAD_PART_ELSEWHERE")
    _numbers_check(session, [number])
    expected = session.part_bytes(number)
    if length != expected:
        raise _part_size_error(number, expected, length)
    writer = artifact_store().part_writer(session.storage_key, number)
    received = 0
    try:
        for chunk in chunks:
            received += len(chunk)
            if received > expected:
                break
            writer.write(chunk)
        if received != expected:
            raise _part_size_error(number, expected, received)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return received


def _part_size_error(number: int, expected: int, got: int | None) -> ApplicationError:
    return ApplicationError(
        f"Part {number} must be exactly {expected} bytes; {got if got is not None else 'an unknown number of'} "
        "came. Nothing of it was kept: send it again.", code="PART_SIZE_MISMATCH",
        details=[{"field": f"parts[{number}]", "message": f"Expected {expected} bytes, got {got}."}])


def upload_session_complete(*, session: UploadSession) -> tuple[SessionView, bool]:
    """Assembles the parts into the artifact and records the version (unverified until the worker hashes it).

    Returns (view, created): False when the same version with this SHA-256 already existed. Missing or
    wrong-size parts: UPLOAD_INCOMPLETE, and the session stays open for them. Assembled bytes the registry
    refuses (not a model, another framework) end the session as aborted, leaving nothing stored.
    """
    _require_open(session)
    store = artifact_store()
    metadata = dict(session.metadata)
    framework = metadata.pop("framework")
    with transaction.atomic():
        session = UploadSession.objects.select_for_update().get(pk=session.pk)
        _require_open(session)  # a concurrent complete or abort got there first
        stored = _parts_stored(session)
        # No parts but the object: an earlier complete assembled it and died before recording the version.
        assembled = not stored and store.exists(session.storage_key)
        if not assembled:
            _parts_check(session, stored)
        existing = services.existing_version(session.name, session.version, session.sha256)
        if existing is not None:
            _storage_discard(session, store)
            _session_end(session, to=S.COMPLETED, model_version=existing)
            return upload_session_view(session), False
        if not assembled:
            store.multipart_complete(session.storage_key, session.upload_id, session.part_count, session.part_bytes)
        failure: BaseException | None = None
        try:
            with tracing.span("model.upload", attributes={
                    "model.id": f"{session.name}-{session.version}", "model.framework": framework,
                    "artifact.size": session.size, "artifact.sha256": session.sha256,
                    "upload.session": str(session.pk)}):
                version = _version_record(session, store, framework, metadata)
        except BaseException as exc:  # re-raised below, once the session is recorded as aborted
            failure = exc
        if failure is None:
            _session_end(session, to=S.COMPLETED, model_version=version)
    if failure is not None:
        _assembled_discard(session, store)
        if isinstance(failure, IntegrityError):  # another upload recorded this name+version meanwhile
            raise ConflictError(f"{session.name}-{session.version} was recorded by another upload meanwhile.",
                                code="VERSION_EXISTS") from failure
        raise failure
    logger.info("upload session completed", extra={"session": str(session.pk), "model_id": version.model_id})
    return upload_session_view(session), True


def _parts_check(session: UploadSession, stored: dict[int, int]) -> None:
    problems = []
    for number in range(1, session.part_count + 1):
        expected = session.part_bytes(number)
        if number not in stored:
            problems.append({"field": f"parts[{number}]", "message": f"Missing ({expected} bytes expected)."})
        elif stored[number] != expected:
            problems.append({"field": f"parts[{number}]",
                             "message": f"Has {stored[number]} bytes; it must have exactly {expected}: send it again."})
    if problems:
        raise ApplicationError(
            f"{len(problems)} of {session.part_count} parts are missing or the wrong size; send them, then complete "
            "again.", code="UPLOAD_INCOMPLETE", details=problems)


def _version_record(session: UploadSession, store: ArtifactStore, framework: str, metadata: dict) -> ModelVersion:
    stored = store.size(session.storage_key)
    if stored != session.size:
        raise ApplicationError(f"The assembled artifact has {stored} bytes, not the declared {session.size}.",
                               code="UPLOAD_INCOMPLETE", details=[{"field": "size", "message": "Does not match."}])
    sniffer = FormatSniffer()
    with store.open(session.storage_key, session.size) as reader:
        sniffer.feed_stored(reader, session.size)
    detected = services.format_detect(sniffer, framework, lambda: store.open(session.storage_key, session.size))
    return services.model_version_record(
        name=session.name, version=session.version, framework=framework, storage_key=session.storage_key,
        sha256=session.sha256, size=session.size, filename=session.filename, detected=detected,
        sha256_verified=False, uploaded_by=session.owner, **metadata)


def _assembled_discard(session: UploadSession, store: ArtifactStore) -> None:
    """The assembled object was refused: delete it and end the session."""
    _storage_discard(session, store)
    _session_end(session, to=S.ABORTED)


def upload_session_abort(*, session: UploadSession) -> None:
    """Ends an open session and deletes its parts; a session that already ended is left as it is (idempotent)."""
    if _session_end(session, to=S.ABORTED):
        _storage_discard(session, artifact_store())
        logger.info("upload session aborted", extra={"session": str(session.pk)})


def upload_sessions_expire(*, now=None) -> int:
    """Beat: expires every open session past its expiry and aborts its parts; returns how many."""
    now = now or timezone.now()
    return sum(_expire(session) for session in UploadSession.objects.filter(status=S.OPEN, expires_at__lte=now))
