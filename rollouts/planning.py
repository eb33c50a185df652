"""Set-based SQL for a distribution's devices: the target filter, the stage placement, the offers.

Everything here is one statement over the whole set, never a Python loop over devices: creating a
distribution over a million devices must take seconds, not hours. A distribution ships one model: it
reads and offers only that model's slot on each device (devices.services.desired_state writes the slots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.db import connection

from devices.services.desired_state import desired_offer, slot_has_model_sql, slot_occupies_sql
from hotswap.exceptions import ApplicationError
from hotswap_device.protocol import MAX_MODELS
from models_app.models import ModelVersion
from rollouts import assignment_states as states
from rollouts.models import Distribution, Stage

TARGET_KEYS = {"regions", "device_types", "tags", "device_ids", "min_memory_mb", "running_versions", "versions"}
MAX_LIST = 10_000
# A model_id is name (64) + "-" + version (64); the other lists hold device fields of 64 characters.
_NAME_MAX = {"running_versions": 129, "versions": 129}
# Low-discrepancy sequence step (the golden ratio's conjugate): the devices whose score falls below
# any share p form an even, systematic sample of a list sorted by region and type, so every stage
# covers regions and device types in proportion.
_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class TargetSQL:
    """A WHERE clause over devices_device d (with its parameters) selecting a distribution's target set."""

    where: str
    params: list[Any]
    ai_model_id: int


def target_normalise(raw: Any) -> dict:
    """Validates a target filter; an empty filter targets the devices that run or are assigned the model."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApplicationError("target must be an object.", code="VALIDATION_ERROR",
                               details=[{"field": "target", "message": "Must be an object."}])
    details = [{"field": f"target.{key}", "message": f"Unknown filter; use {', '.join(sorted(TARGET_KEYS))}."}
               for key in sorted(set(raw) - TARGET_KEYS)]
    target: dict[str, Any] = {}
    for key in ("regions", "device_types", "tags", "device_ids", "running_versions", "versions"):
        value = raw.get(key)
        if value in (None, []):
            continue
        if (not isinstance(value, list) or len(value) > MAX_LIST
                or not all(isinstance(item, str) and 0 < len(item) <= _NAME_MAX.get(key, 64) for item in value)):
            details.append({"field": f"target.{key}", "message": f"A list of at most {MAX_LIST} non-empty names."})
            continue
        target[key] = sorted(set(value))
    memory = raw.get("min_memory_mb")
    if memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            details.append({"field": "target.min_memory_mb", "message": "A whole number of megabytes, 0 or more."})
        else:
            target["min_memory_mb"] = memory
    if details:
        raise ApplicationError("The target filter is invalid.", code="VALIDATION_ERROR", details=details)
    return target


def target_explicit(target: dict) -> bool:
    """Whether the filter names devices itself: only then may a distribution install the model on devices
    that do not have it; without one it upgrades the devices that run or are assigned the model."""
    return bool(target)


# The device's slot of the model says it has the model; it occupies a place; how many places are taken.
_HAS_MODEL = ("SELECT 1 FROM devices_modelslot m "  # noqa: S608 - fixed fragments
              f"WHERE m.device_id = d.id AND m.ai_model_id = %s AND {slot_has_model_sql('m')}")
_OCCUPIES = ("SELECT 1 FROM devices_modelslot m "  # noqa: S608 - fixed fragments
             f"WHERE m.device_id = d.id AND m.ai_model_id = %s AND {slot_occupies_sql('m')}")
_MODELS_HELD = ("SELECT count(*) FROM devices_modelslot m "  # noqa: S608 - fixed fragments
                f"WHERE m.device_id = d.id AND {slot_occupies_sql('m')}")
_SLOT_VERSION_IN = ("d.id IN (SELECT s.device_id FROM devices_modelslot s WHERE s.{column} IN "
                    "(SELECT id FROM models_app_modelversion WHERE model_id = ANY(%s)))")


def target_sql(target: dict, versions: list[ModelVersion]) -> TargetSQL:
    """Devices a distribution of `versions` (one model) goes to, among those that can run every one of them.

    No filter: the devices that run or are assigned the model. A filter: the devices it matches, with or
    without the model, except devices that already have protocol.MAX_MODELS other models.
    """
    ai_model_id = versions[0].ai_model_id
    clauses, params = ["d.status <> 'decommissioned'"], []
    if target_explicit(target):
        clauses.append(f"(EXISTS ({_OCCUPIES}) OR ({_MODELS_HELD}) < %s)")
        params += [ai_model_id, MAX_MODELS]
    else:
        clauses.append(f"EXISTS ({_HAS_MODEL})")
        params.append(ai_model_id)
    for key, column in (("regions", "d.region"), ("device_types", "d.device_type"), ("device_ids", "d.device_id")):
        if target.get(key):
            clauses.append(f"{column} = ANY(%s)")
            params.append(target[key])
    if target.get("tags"):
        clauses.append("d.tags @> %s::varchar[]")
        params.append(target["tags"])
    if target.get("running_versions"):
        clauses.append(_SLOT_VERSION_IN.format(column="running_version_id"))
        params.append(target["running_versions"])
    if target.get("versions"):
        clauses.append(f"({_SLOT_VERSION_IN.format(column='running_version_id')} OR "
                       f"{_SLOT_VERSION_IN.format(column='version_id')})")
        params += [target["versions"], target["versions"]]
    if target.get("min_memory_mb") is not None:
        clauses.append("d.memory_mb >= %s")
        params.append(target["min_memory_mb"])
    for version in versions:
        if version.min_memory_mb:
            clauses.append("(d.memory_mb IS NULL OR d.memory_mb >= %s)")
            params.append(version.min_memory_mb)
        if version.target_device_type:
            clauses.append("(d.device_type = '' OR d.device_type = %s)")
            params.append(version.target_device_type)
    return TargetSQL(" AND ".join(clauses), params, ai_model_id)


def target_regions(sql: TargetSQL) -> dict[str, int]:
    """Targeted devices per region."""
    with connection.cursor() as cursor:
        query = f"SELECT d.region, count(*) FROM devices_device d WHERE {sql.where} GROUP BY d.region"  # noqa: S608
        cursor.execute(query, sql.params)
        return dict(cursor.fetchall())


def target_conflicts(sql: TargetSQL, *, exclude_distribution: int | None = None) -> list[dict]:
    """Open distributions of the same model already holding some of the targeted devices:
    [{distribution, name, devices}]. Distributions of other models may hold the same devices at once."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT a.distribution_id, coalesce(nullif(x.name, ''), 'distribution ' || x.id), count(*)
            FROM rollouts_assignment a
            JOIN devices_device d ON d.id = a.device_id
            JOIN rollouts_distribution x ON x.id = a.distribution_id
            WHERE a.is_open AND a.ai_model_id = %s AND a.distribution_id IS DISTINCT FROM %s AND {sql.where}
            GROUP BY a.distribution_id, x.name, x.id ORDER BY a.distribution_id
        """  # noqa: S608 - only fixed fragments and placeholders
        , [sql.ai_model_id, exclude_distribution, *sql.params])
        return [{"distribution": pk, "name": name, "devices": count} for pk, name, count in cursor.fetchall()]


def _stage_case(stages: list[Stage], placement: str, count: int) -> tuple[str, list[Any]]:
    """A CASE expression giving each scored device its stage id."""
    if placement == "region":
        by_region = [stage for stage in stages if stage.kind == Stage.Kind.REGION]
        rest = [stage for stage in stages if stage.kind == Stage.Kind.REST]
        parts, params = [], []
        for stage in by_region:
            parts.append("WHEN region = %s THEN %s")
            params += [stage.region, stage.pk]
        fallback = rest[0].pk if rest else by_region[-1].pk
        return f"CASE {' '.join(parts)} ELSE {int(fallback)} END", params
    if placement == "ab":
        return "%s", [stages[0].pk]
    placed = [stage for stage in stages if stage.percent is not None]
    parts, params = [], []
    for stage in placed[:-1]:
        parts.append("WHEN rank <= %s THEN %s")
        params += [math.ceil(count * stage.percent / 100), stage.pk]
    if not parts:
        return "%s", [placed[-1].pk]
    return f"CASE {' '.join(parts)} ELSE {int(placed[-1].pk)} END", params


def assignments_plan(*, distribution: Distribution, stages: list[Stage], placement: str, sql: TargetSQL,
                     count: int) -> int:
    """Writes one pending Assignment per targeted device, in its stage; returns how many were written.

    Devices are ordered by region, type and a hash of (distribution, device) (random-looking but
    repeatable), then ranked by a low-discrepancy score: stage k takes the first ceil(n·p_k) ranks.
    """
    stage_case, stage_params = _stage_case(stages, placement, count)
    if placement == "ab":
        version_case = "CASE WHEN rank <= %s THEN %s ELSE %s END"
        version_params = [math.ceil(count * distribution.config["split"] / 100), distribution.version_id,
                          distribution.version_b_id]
    else:
        version_case, version_params = "%s", [distribution.version_id]
    # For a million devices (bench/distribution.py): the sort keys compare bytes (COLLATE "C"), not the
    # locale's rules; the score is float8 arithmetic, not numeric; and rows go in by device id, so every
    # index keyed by device and the deferred foreign-key checks at commit walk their pages in order
    # instead of at random (together 2-3x faster than the first version of this statement).
    with connection.cursor() as cursor:
        cursor.execute(f"""
            WITH targeted AS (
                SELECT d.id, d.region, coalesce(s.version_id, s.running_version_id) AS previous,
                       row_number() OVER (ORDER BY d.region COLLATE "C", d.device_type COLLATE "C",
                                          md5(%s || d.device_id) COLLATE "C") AS r
                FROM devices_device d
                LEFT JOIN devices_modelslot s ON s.device_id = d.id AND s.ai_model_id = %s
                WHERE {sql.where}
            ), scored AS (
                SELECT id, region, previous,
                       row_number() OVER (ORDER BY (r * {_GOLDEN}::float8) - floor(r * {_GOLDEN}::float8), r) AS rank
                FROM targeted
            )
            INSERT INTO rollouts_assignment (distribution_id, stage_id, device_id, ai_model_id, version_id,
                                             previous_version_id, state, is_open, attempts, last_error)
            SELECT %s, {stage_case}, id, %s, {version_case}, previous, %s, true, 0, ''
            FROM scored
            ORDER BY id
        """  # noqa: S608 - only fixed fragments and placeholders
        , [f"{distribution.pk}:", sql.ai_model_id, *sql.params, distribution.pk, *stage_params, sql.ai_model_id,
           *version_params, states.A.PENDING])
        return cursor.rowcount


def stage_device_counts(distribution: Distribution) -> None:
    """Stores each stage's device count (shown in the console and the API without counting again)."""
    with connection.cursor() as cursor:
        cursor.execute("""
            UPDATE rollouts_stage s SET device_count = coalesce(c.n, 0)
            FROM rollouts_stage s2 LEFT JOIN (
                SELECT stage_id, count(*) AS n FROM rollouts_assignment
                WHERE distribution_id = %s AND NOT state = ANY(%s) GROUP BY stage_id
            ) c ON c.stage_id = s2.id
            WHERE s.id = s2.id AND s2.distribution_id = %s
        """, [distribution.pk, list(states.NOT_COUNTED), distribution.pk])


def joiners_add(*, distribution: Distribution, stage: Stage, sql: TargetSQL) -> int:
    """Devices that match the filter now but hold no open assignment of the model: they join `stage`.

    For a regional rollout a joiner waits for its own region's stage when that one has not started.
    """
    pending_regions = {s.region: s.pk for s in distribution.stages.filter(kind=Stage.Kind.REGION,
                                                                          status=Stage.Status.PENDING)}
    region_case, params = "%s", [stage.pk]
    if pending_regions:
        region_case = "CASE " + " ".join("WHEN d.region = %s THEN %s" for _ in pending_regions) + " ELSE %s END"
        params = [value for item in pending_regions.items() for value in item] + [stage.pk]
    version_case, version_params = "%s", [distribution.version_id]
    if distribution.strategy == "ab_test" and stage.kind == Stage.Kind.AB_TEST:
        # Joiners are split by the same hash: a stable, even share without ranking the whole set again.
        version_case = ("CASE WHEN ('x' || substr(md5(%s || d.device_id), 1, 8))::bit(32)::bigint < %s "
                        "THEN %s ELSE %s END")
        version_params = [f"{distribution.pk}:", int(distribution.config["split"] / 100 * 2**32),
                          distribution.version_id, distribution.version_b_id]
    elif distribution.winner_id:
        version_params = [distribution.winner_id]
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO rollouts_assignment (distribution_id, stage_id, device_id, ai_model_id, version_id,
                                             previous_version_id, state, is_open, attempts, last_error)
            SELECT %s, {region_case}, d.id, %s, {version_case}, coalesce(s.version_id, s.running_version_id),
                   %s, true, 0, ''
            FROM devices_device d
            LEFT JOIN devices_modelslot s ON s.device_id = d.id AND s.ai_model_id = %s
            WHERE {sql.where}
              AND NOT EXISTS (SELECT 1 FROM rollouts_assignment a WHERE a.device_id = d.id
                              AND ((a.is_open AND a.ai_model_id = %s) OR a.distribution_id = %s))
            ON CONFLICT DO NOTHING
        """  # noqa: S608 - only fixed fragments and placeholders
        , [distribution.pk, *params, sql.ai_model_id, *version_params, states.A.PENDING, sql.ai_model_id,
           *sql.params, sql.ai_model_id, distribution.pk])
        return cursor.rowcount


# The UPDATE finds each assignment again by the unique (stage, device) index: right after creation the
# planner has no statistics for the new stage, and a join it estimates at one row became a nested loop
# over two sets, O(n²): minutes for a 50,000-device stage.
_OFFERED_SQL = """
    UPDATE rollouts_assignment a
    SET state = CASE WHEN o.running_id = a.version_id THEN %(active)s ELSE %(offered)s END,
        finished_at = CASE WHEN o.running_id = a.version_id THEN %(now)s END,
        sequence = o.sequence, offered_at = %(now)s, updated_at = %(now)s, attempts = a.attempts + 1, last_error = ''
    FROM unnest(%(devices)s::bigint[], %(sequences)s::bigint[], %(running)s::bigint[])
         AS o(device_id, sequence, running_id)
    WHERE a.stage_id = %(stage)s AND a.device_id = o.device_id
"""


def assignments_offer(*, stage: Stage, now, condition: str = "a.state = %(pending)s", params: dict | None = None,
                      reason: str = "") -> int:
    """Makes the chosen assignments' versions the desired state of the devices' slots of the model → offered.

    `condition` picks the stage's assignments (SQL over `a`, with named `params`). The slots are written
    by devices.services.desired_state in one statement; a device that already runs the version is active
    at once.
    """
    distribution = stage.distribution
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT a.device_id, a.version_id FROM rollouts_assignment a "  # noqa: S608
                       f"WHERE a.stage_id = %(stage)s AND {condition} ORDER BY a.device_id",
                       {"stage": stage.pk, "pending": states.A.PENDING, **(params or {})})
        chosen = cursor.fetchall()
    if not chosen:
        return 0
    written = desired_offer(
        ai_model_id=distribution.ai_model_id, device_ids=[row[0] for row in chosen],
        version_ids=[row[1] for row in chosen], rollback=distribution.is_rollback, now=now,
        source=f"distribution:{distribution.pk}", reason=(reason or f"{distribution} · {stage.name}")[:500],
        traceparent=distribution.traceparent)
    with connection.cursor() as cursor:
        cursor.execute(_OFFERED_SQL, {
            "stage": stage.pk, "now": now, "active": states.A.ACTIVE, "offered": states.A.OFFERED,
            "devices": [row[0] for row in written], "sequences": [row[1] for row in written],
            "running": [row[2] for row in written]})
        return cursor.rowcount


@dataclass(frozen=True)
class InstallOutcome:
    """An assignment an install report (or the device's running version) just finished: a device.update."""

    stage_id: int
    device_id: int
    version_id: int
    offered_at: Any
    evidence: str  # report, or heartbeat (the device runs the version; its report was lost)
    status: str
    error: str
    traceparent: str
    duration_ms: int | None
    received_at: Any


_OUTCOME_COLUMNS = "a.stage_id, a.device_id, a.version_id, a.offered_at"


def assignments_follow_reports(*, stage: Stage, now, outcomes: list[InstallOutcome] | None = None) -> int:
    """Moves in-flight assignments of the stage by the devices' install reports and their slots' running versions.

    With `outcomes` (tracing), the assignments that reached an outcome are appended to it.
    """
    mapping, mapping_params = states.report_case("r.status")
    returning = (f" RETURNING {_OUTCOME_COLUMNS}, 'report', r.status, r.error, r.traceparent, r.duration_ms, "
                 "r.received_at" if outcomes is not None else "")
    params = {"stage": stage.pk, "now": now, "in_flight": list(states.IN_FLIGHT), "final": list(states.FINAL_REPORTS),
              "reported": list(states.REPORT_STATES), "active": states.A.ACTIVE, **mapping_params}
    with connection.cursor() as cursor:
        cursor.execute(f"""
            UPDATE rollouts_assignment a
            SET state = {mapping}, last_error = left(r.error, 2000), updated_at = %(now)s,
                finished_at = CASE WHEN r.status = ANY(%(final)s) THEN %(now)s END
            FROM (
                SELECT DISTINCT ON (ir.device_id) ir.device_id, ir.status, ir.error, ir.traceparent, ir.duration_ms,
                                                  ir.received_at
                FROM rollouts_assignment a2
                JOIN devices_installreport ir ON ir.device_id = a2.device_id AND ir.version_id = a2.version_id
                WHERE a2.stage_id = %(stage)s AND a2.state = ANY(%(in_flight)s) AND ir.status = ANY(%(reported)s)
                  AND (ir.sequence >= a2.sequence OR (ir.sequence IS NULL AND ir.received_at >= a2.offered_at))
                ORDER BY ir.device_id, ir.id DESC
            ) r
            WHERE a.stage_id = %(stage)s AND a.device_id = r.device_id AND a.state = ANY(%(in_flight)s)
              AND a.state <> {mapping}{returning}
        """  # noqa: S608 - only fixed fragments and placeholders
        , params)
        moved = cursor.rowcount
        if outcomes is not None:
            outcomes.extend(InstallOutcome(*row) for row in cursor.fetchall()
                            if states.REPORT_STATES[row[5]] in states.FINISHED)
        # A device whose slot of the model runs the version is active even if its report was lost.
        returning = (f" RETURNING {_OUTCOME_COLUMNS}, 'heartbeat', %(active)s, '', '', NULL, %(now)s"
                     if outcomes is not None else "")
        cursor.execute(f"""
            UPDATE rollouts_assignment a SET state = %(active)s, updated_at = %(now)s, finished_at = %(now)s
            FROM devices_modelslot s
            WHERE a.stage_id = %(stage)s AND a.state = ANY(%(in_flight)s) AND s.device_id = a.device_id
              AND s.ai_model_id = a.ai_model_id AND s.running_version_id = a.version_id{returning}
        """  # noqa: S608 - only fixed fragments and placeholders
        , params)
        if outcomes is not None:
            outcomes.extend(InstallOutcome(*row) for row in cursor.fetchall())
        return moved + cursor.rowcount


def stage_counts(stage_ids: list[int]) -> dict[int, dict[str, int]]:
    """{stage id: {assignment state: count}} in one GROUP BY."""
    out: dict[int, dict[str, int]] = {pk: {} for pk in stage_ids}
    with connection.cursor() as cursor:
        cursor.execute("SELECT stage_id, state, count(*) FROM rollouts_assignment WHERE stage_id = ANY(%s) "
                       "GROUP BY stage_id, state", [stage_ids])
        for stage_id, state, count in cursor.fetchall():
            out[stage_id][state] = count
    return out
