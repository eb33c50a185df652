"""Uploading an artifact: an upload session when the server offers one, the multipart POST otherwise.

A session (POST /api/v1/uploads) gives a part size and which parts the store already has; each missing part
is PUT straight to its presigned URL (S3) or to the API (local storage), several at a time, each retried.
Running the same upload again (same name, version and bytes) gets the same open session back and sends only
the parts still missing: nothing is kept on the client's side. Servers without sessions get the plain
multipart `POST /api/v1/models`, streamed from disk.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from hotswap_cli.api import Api, ApiError, unreachable
from hotswap_cli.output import Output, Transfer

CHUNK = 1024 * 1024
PART_ATTEMPTS = 5
TARGET_BATCH = 1000  # part URLs asked for in one call (the API's most)
PART_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
# Answers of a part PUT worth another attempt: a presigned URL that expired (403, a new one is asked for),
# a timeout, too many requests, and the store's own failures.
RETRYABLE = {403, 408, 429, 500, 502, 503, 504}


@dataclass
class UploadOutcome:
    """What was uploaded and how: the version as the API answers it, and the bytes this run sent."""

    version: dict
    method: str  # "session" or "multipart"
    session_id: str | None = None
    part_count: int = 0
    parts_sent: int = 0
    parts_already_there: int = 0
    bytes_already_there: int = 0
    bytes_sent: int = 0

    def as_dict(self) -> dict:
        return {"method": self.method, "session": self.session_id, "part_count": self.part_count,
                "parts_sent": self.parts_sent, "parts_already_there": self.parts_already_there,
                "bytes_already_there": self.bytes_already_there, "bytes_sent": self.bytes_sent}


def file_sha256(path: Path, output: Output) -> str:
    digest = hashlib.sha256()
    with output.transfer("checksum", total=path.stat().st_size) as progress, path.open("rb") as handle:
        while block := handle.read(4 * CHUNK):
            digest.update(block)
            progress.advance(len(block))
    return digest.hexdigest()


class RateLimit:
    """At most `rate` bytes per second across every sending thread (--limit-rate), None: no limit."""

    def __init__(self, rate: int | None):
        self.rate, self._lock, self._next = rate, threading.Lock(), time.monotonic()

    def take(self, count: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + count / self.rate
            delay = self._next - now - count / self.rate
        if delay > 0:
            time.sleep(delay)


class Uploader:
    """One artifact to one server; `run()` uploads it and answers an UploadOutcome, raising ApiError on refusal."""

    def __init__(self, api: Api, path: Path, fields: dict, *, output: Output, parallel: int = 8,
                 limit_rate: int | None = None, sha256: str | None = None, multipart: bool = False):
        self.api, self.path, self.fields, self.output = api, path, fields, output
        self.size = path.stat().st_size
        self.parallel, self.rate = max(parallel, 1), RateLimit(limit_rate)
        self.sha256, self.multipart = sha256, multipart
        self._stop = threading.Event()
        self._sent = 0
        self._sent_lock = threading.Lock()

    def run(self) -> UploadOutcome:
        self.api.get("/auth/me")  # renews an expired JWT now, not halfway through a body that cannot be replayed
        self.sha256 = self.sha256 or file_sha256(self.path, self.output)
        if self.multipart:
            return self._multipart()
        body = {**self.fields, "size": self.size, "sha256": self.sha256, "filename": self.path.name}
        try:
            session = self.api.request("POST", "/uploads", json=body, idempotent=True)  # answers the open one
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
            return self._multipart()  # this server has no upload sessions
        return self._session(session)

    # --- upload sessions ---------------------------------------------------------------------------------------

    def _session(self, session: dict) -> UploadOutcome:
        count, done = session["part_count"], set(session.get("parts_done") or [])
        outcome = UploadOutcome(version={}, method="session", session_id=session["id"], part_count=count,
                                parts_already_there=len(done),
                                bytes_already_there=sum(self._part_size(session, n) for n in done))
        if session.get("status") == "completed" and session.get("model_version"):
            outcome.version = session["model_version"]
            return outcome
        if done:
            self.output.note(f"resuming upload {session['id']}: {len(done)} of {count} parts already stored")
        for _round in range(2):  # a second round only if completing finds a part missing after all
            missing = [n for n in range(1, count + 1) if n not in done]
            already = sum(self._part_size(session, n) for n in done)
            with self.output.transfer(f"upload {self.path.name}", total=self.size, completed=already) as progress:
                self._send_parts(session, missing, progress)
            outcome.parts_sent += len(missing)
            try:
                completed = self.api.request("POST", f"/uploads/{session['id']}/complete", json={}, idempotent=True)
                break
            except ApiError as exc:
                if exc.code == "UPLOAD_COMPLETED":  # an attempt whose answer was lost completed it
                    completed = self.api.get(f"/uploads/{session['id']}")
                    break
                if exc.code != "UPLOAD_INCOMPLETE" or _round:
                    raise
                session = self.api.get(f"/uploads/{session['id']}")
                done = set(session.get("parts_done") or [])
        outcome.bytes_sent = self._sent
        outcome.version = completed.get("model_version") or {}
        return outcome

    @staticmethod
    def _part_size(session: dict, number: int) -> int:
        part_size, count = session["part_size"], session["part_count"]
        return session["size"] - part_size * (count - 1) if number == count else part_size

    def _part_targets(self, session: dict, numbers: list[int]) -> dict[int, dict]:
        """Where to send each part, asked for ahead in batches: no API round trip between two parts."""
        targets = {}
        for start in range(0, len(numbers), TARGET_BATCH):
            answer = self.api.request("POST", f"/uploads/{session['id']}/parts",
                                      json={"numbers": numbers[start:start + TARGET_BATCH]}, idempotent=True)
            expires = datetime.fromisoformat(answer["expires_at"]).timestamp()
            targets.update({part["number"]: {**part, "expires": expires} for part in answer["parts"]})
        return targets

    def _fresh_target(self, session: dict, number: int) -> dict:
        answer = self.api.request("POST", f"/uploads/{session['id']}/parts", json={"numbers": [number]},
                                  idempotent=True)
        return {**answer["parts"][0], "expires": datetime.fromisoformat(answer["expires_at"]).timestamp()}

    def _send_parts(self, session: dict, numbers: list[int], progress: Transfer) -> None:
        if not numbers:
            return
        targets = self._part_targets(session, numbers)
        with httpx.Client(timeout=PART_TIMEOUT, limits=httpx.Limits(max_connections=self.parallel + 1)) as http, \
                ThreadPoolExecutor(self.parallel, thread_name_prefix="part") as pool:
            futures = [pool.submit(self._send_part, http, session, targets[number], progress) for number in numbers]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: stop the parts in flight; a re-run resumes from what was stored
                self._stop.set()
                raise
            self._stop.set()
            for future in futures:
                future.cancel()
            for future in finished:
                future.result()  # the first failure, if any
        self._stop.clear()

    def _send_part(self, http: httpx.Client, session: dict, part: dict, progress: Transfer) -> None:
        number, size = part["number"], self._part_size(session, part["number"])
        offset = session["part_size"] * (number - 1)
        error = ""
        for attempt in range(PART_ATTEMPTS):
            if self._stop.is_set():
                return
            if attempt:
                time.sleep(min(2 ** attempt, 20))
            if attempt or part["expires"] - time.time() < 60:  # a URL that may have expired or been refused
                part = self._fresh_target(session, number)
            headers = {"Content-Length": str(size)}
            if part.get("auth"):
                headers["Authorization"] = self.api.profile.authorization
            sent = [0]
            try:
                response = http.request(part.get("method", "PUT"), part["url"], headers=headers,
                                        content=self._read(offset, size, progress, sent))
            except httpx.HTTPError as exc:
                error = str(unreachable(part["url"].split("?")[0], exc))
            else:
                if response.status_code < 300:
                    with self._sent_lock:
                        self._sent += size
                    return
                if response.status_code not in RETRYABLE:
                    if part.get("auth"):  # the API's own part endpoint answers in the API's error shape
                        raise ApiError.from_response(response)
                    message = f"part {number}: the store answered {response.status_code}: {response.text[:300]}"
                    raise ApiError(code="PART_REFUSED", message=message, status=response.status_code, body={
                        "error": {"code": "PART_REFUSED", "message": message, "details": []}})
                error = f"HTTP {response.status_code}: {response.text[:200]}"
            progress.advance(-sent[0])  # this part starts over
        raise ApiError(code="PART_FAILED", message=f"part {number} failed {PART_ATTEMPTS} times (last: {error}); "
                       "run the same command again to resume",
                       body={"error": {"code": "PART_FAILED", "message": f"part {number}: {error}", "details": []}})

    def _read(self, offset: int, size: int, progress: Transfer, sent: list[int]) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            handle.seek(offset)
            left = size
            while left > 0:
                if self._stop.is_set():
                    raise OSError("upload stopped")
                block = handle.read(min(CHUNK, left))
                if not block:
                    raise OSError(f"{self.path} became shorter while it was being uploaded")
                self.rate.take(len(block))
                left -= len(block)
                sent[0] += len(block)
                progress.advance(len(block))
                yield block

    # --- the multipart POST ------------------------------------------------------------------------------------

    def _multipart(self) -> UploadOutcome:
        boundary = uuid.uuid4().hex
        fields = {**self.fields, "sha256": self.sha256}
        head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                        for name, value in _form_values(fields))
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; '
                 f'filename="{self.path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        with self.output.transfer(f"upload {self.path.name}", total=self.size) as progress:
            def body() -> Iterator[bytes]:
                yield head
                yield from self._read(0, self.size, progress, [0])
                yield tail

            response = self.api.send("POST", "/models", content=body(), headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + self.size + len(tail))})
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return UploadOutcome(version=response.json(), method="multipart", part_count=1, parts_sent=1,
                             bytes_sent=self.size)


def _form_values(fields: dict) -> Iterator[tuple[str, str]]:
    for name, value in fields.items():
        if value is None or value == "":
            continue
        for item in value if isinstance(value, list) else [value]:
            yield name, item if isinstance(item, str) else str(item)
