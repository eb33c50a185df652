"""The fleet simulator's pure parts: device attributes, per-version behaviour, metric windows.

Nothing here touches the network or Django, so all of it is unit-tested without a server.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hotswap_device.client import enrollment_body
from hotswap_device.protocol import LATENCY_BUCKETS_MS, MAX_LATENCY_MS, MAX_WINDOW

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
DEFAULT_TYPES = ("edge-camera", "gateway")
# Upper bounds (ms) of the protocol's fixed latency histogram; a 13th, open bucket follows.
# Percentiles come from at most this many drawn latencies per window: cheap for thousands of devices.
LATENCY_SAMPLES = 200

# Capability choices per device type; a device's picks come from a generator seeded by its id.
PROFILES: dict[str, dict[str, tuple]] = {
    "edge-camera": {"cpu_cores": (2, 4), "memory_mb": (1024, 2048, 4096), "storage_gb": (16, 32, 64),
                    "gpu": (None, None, None, "hailo-8")},
    "gateway": {"cpu_cores": (4, 8), "memory_mb": (4096, 8192, 16384), "storage_gb": (64, 128, 256),
                "gpu": (None, "jetson-orin-nano")},
}
DEFAULT_PROFILE: dict[str, tuple] = {"cpu_cores": (2, 4, 8), "memory_mb": (2048, 4096, 8192),
                                     "storage_gb": (32, 64, 128), "gpu": (None, None, "jetson-orin-nano")}


@dataclass(frozen=True)
class DeviceSpec:
    """Who a virtual device is: derived from its index alone, so every run (and restart) agrees."""

    index: int
    device_id: str
    name: str
    device_type: str
    region: str
    tags: tuple[str, ...]
    capabilities: dict = field(hash=False)

    def enrollment_body(self, enrollment_key: str) -> dict:
        return enrollment_body(enrollment_key, self.device_id, capabilities=self.capabilities, name=self.name,
                               device_type=self.device_type, region=self.region, tags=self.tags)


def device_spec(index: int, *, prefix: str = "sim-", regions: Sequence[str] = DEFAULT_REGIONS,
                types: Sequence[str] = DEFAULT_TYPES) -> DeviceSpec:
    """Device `index`: regions round-robin, types round-robin per region cycle, capabilities seeded by the id."""
    if not regions or not types:
        raise ValueError("at least one region and one device type are needed")
    device_id = f"{prefix}{index:05d}"
    region = regions[index % len(regions)]
    device_type = types[(index // len(regions)) % len(types)]
    profile = PROFILES.get(device_type, DEFAULT_PROFILE)
    rng = random.Random(device_id)  # str seeds are hashed with SHA-512: stable across runs and PYTHONHASHSEED
    capabilities = {key: rng.choice(profile[key]) for key in ("cpu_cores", "memory_mb", "storage_gb", "gpu")}
    return DeviceSpec(index=index, device_id=device_id, name=f"Simulated {device_type} {index}",
                      device_type=device_type, region=region, tags=("simulated", f"gen{1 + index % 3}"),
                      capabilities=capabilities)


# --- behaviour per model version -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a model version performs on the simulated fleet: latency ~ Normal(mean, sd), error rate, accuracy."""

    latency_ms: float = 20.0
    latency_sd_ms: float = 3.0
    error_rate: float = 0.001
    accuracy: float | None = None

    def describe(self) -> str:
        accuracy = "" if self.accuracy is None else f", accuracy {self.accuracy:g}"
        return f"latency {self.latency_ms:g}±{self.latency_sd_ms:g} ms, errors {self.error_rate:g}{accuracy}"


DEFAULT_BEHAVIOUR = Behaviour()
DEFAULT_KEYS = ("*", "default")


class BehaviourError(ValueError):
    """A --behaviour specification that cannot be understood; the message says where and why."""


_LATENCY = re.compile(r"^\s*(?P<mean>[0-9.]+)\s*(?:(?:±|\+-|\+/-|~)\s*(?P<sd>[0-9.]+))?\s*(?:ms)?\s*$")


def _fraction(text: str, what: str, entry: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise BehaviourError(f"{entry!r}: {what} must be a number from 0 to 1 or a percentage, not {text!r}") from None
    if not 0 <= value <= 1 or math.isnan(value):
        raise BehaviourError(f"{entry!r}: {what} must be between 0 and 1, not {text!r}")
    return value


def parse_behaviour(entry: str) -> tuple[str, Behaviour]:
    """`resnet-1.1.0=latency:40±5,errors:0.02,accuracy:0.85` → ("resnet-1.1.0", Behaviour(...)).

    The key is `<model>-<version>`, a bare version, a bare model name, or `*` for every other version.
    Unnamed parameters keep the defaults (latency 20±3 ms, errors 0.001, no accuracy).
    """
    key, sep, params = entry.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BehaviourError(f"{entry!r}: expected KEY=PARAM:VALUE,... e.g. resnet-1.1.0=latency:40±5,errors:0.02")
    values: dict = {}
    for param in filter(None, (p.strip() for p in params.split(","))):
        name, colon, value = param.partition(":")
        name = name.strip().lower()
        if not colon:
            raise BehaviourError(f"{entry!r}: {param!r} has no value (write NAME:VALUE)")
        if name == "latency":
            match = _LATENCY.match(value)
            try:
                mean = float(match["mean"]) if match else -1.0
                sd = float(match["sd"]) if match and match["sd"] else DEFAULT_BEHAVIOUR.latency_sd_ms
            except ValueError:
                mean = -1.0
            if not match or not 0 < mean <= MAX_LATENCY_MS or not 0 <= sd <= MAX_LATENCY_MS:
                raise BehaviourError(f"{entry!r}: latency must look like 40 or 40±5 (ms), not {value!r}")
            values.update(latency_ms=mean, latency_sd_ms=sd)
        elif name in ("errors", "error_rate", "error-rate"):
            values["error_rate"] = _fraction(value, "errors", entry)
        elif name == "accuracy":
            values["accuracy"] = None if value.strip().lower() == "none" else _fraction(value, "accuracy", entry)
        else:
            raise BehaviourError(f"{entry!r}: unknown parameter {name!r} (known: latency, errors, accuracy)")
    return key, Behaviour(**values)


def parse_behaviours(specs: Iterable[str]) -> dict[str, Behaviour]:
    """Several specifications, each possibly holding several entries separated by ';'."""
    behaviours: dict[str, Behaviour] = {}
    for spec in specs:
        for entry in filter(None, (e.strip() for e in spec.split(";"))):
            key, behaviour = parse_behaviour(entry)
            behaviours[key] = behaviour
    return behaviours


def behaviour_for(behaviours: dict[str, Behaviour], model: str, version: str) -> Behaviour:
    for key in (f"{model}-{version}", version, model, *DEFAULT_KEYS):
        if key in behaviours:
            return behaviours[key]
    return DEFAULT_BEHAVIOUR


# --- metric windows ----------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, product = math.exp(-lam), 0, rng.random()
    while product > threshold:
        k += 1
        product *= rng.random()
    return k


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A Binomial(n, p) draw, cheap for large n (Poisson for rare events, else the normal approximation)."""
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1 - p)
    if n <= 64:
        return sum(rng.random() < p for _ in range(n))
    if n * p < 30:
        return min(n, _poisson(rng, n * p))
    return min(n, max(0, round(rng.gauss(n * p, math.sqrt(n * p * (1 - p))))))


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _histogram(ordered: list[float], total: int) -> list[int]:
    """Bucket counts of the samples scaled up to `total` (largest remainders), so they add up exactly."""
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    bucket = 0
    for value in ordered:
        while bucket < len(LATENCY_BUCKETS_MS) and value > LATENCY_BUCKETS_MS[bucket]:
            bucket += 1
        counts[bucket] += 1
    scaled = [c * total / len(ordered) for c in counts]
    result = [math.floor(s) for s in scaled]
    by_remainder = sorted(range(len(scaled)), key=lambda i: scaled[i] - result[i], reverse=True)
    for i in by_remainder[: total - sum(result)]:
        result[i] += 1
    return result


def metric_window(behaviour: Behaviour, *, model: str, version: str, start: datetime, end: datetime,
                  inference_rate: float, rng: random.Random) -> dict | None:
    """A protocol metric window for [start, end) drawn from the behaviour; None when no inference happened."""
    start = max(start, end - MAX_WINDOW + timedelta(seconds=1))
    if end <= start:
        return None
    count = _poisson(rng, inference_rate * (end - start).total_seconds())
    if count <= 0:
        return None
    ordered = sorted(min(MAX_LATENCY_MS, max(0.1, rng.gauss(behaviour.latency_ms, behaviour.latency_sd_ms)))
                     for _ in range(min(count, LATENCY_SAMPLES)))
    window: dict = {
        "model": model, "version": version, "window_start": iso(start), "window_end": iso(end),
        "inference_count": count, "error_count": binomial(rng, count, behaviour.error_rate),
        "latency_ms": {p: round(_percentile(ordered, q), 3) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "latency_histogram": _histogram(ordered, count),
    }
    if behaviour.accuracy is not None:
        labelled = max(1, count // 10)
        window["accuracy"] = round(binomial(rng, labelled, behaviour.accuracy) / labelled, 4)
        window["labelled_count"] = labelled
    return window


def health_sample(spec: DeviceSpec, rng: random.Random) -> dict:
    """CPU/memory/disk percentages around a per-device baseline."""
    base = random.Random(f"health:{spec.device_id}")
    cpu, memory, disk = base.uniform(10, 60), base.uniform(25, 75), base.uniform(20, 85)

    def jitter(value: float, spread: float) -> float:
        return round(min(100.0, max(0.0, value + rng.uniform(-spread, spread))), 1)

    return {"cpu_percent": jitter(cpu, 15), "memory_percent": jitter(memory, 5), "disk_percent": jitter(disk, 0.5)}
