"""The API keeps its OpenAPI contract: `schemathesis run --checks all` over /api/schema/, bounded, as an Admin.

Schemathesis's engine (the one its CLI drives: examples, coverage, fuzzing and stateful phases, every check)
runs against a real gunicorn on the test database, with a fixed seed and a few examples per operation.
A failure prints what schemathesis found, each with the curl command that reproduces it.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import StopReason, events, from_schema

from hotswap.accounts.roles import Role
from hotswap.accounts.services import api_token_create
from models_app.models import ValidationReport
from rollouts.orchestrator import distribution_advance
from rollouts.services import distribution_create
from tests.devices.conftest import make_device, make_version  # noqa: F401 - fixtures
from tests.live import gunicorn_server
from tests.rollouts.conftest import make_fleet  # noqa: F401 - fixture

# Examples per operation in the fuzzing phase (the coverage phase's boundary cases, ~2,250 requests, come on
# top): the run took 71 s on two busy cores (83 s with the database and server start).
MAX_EXAMPLES = int(os.environ.get("HOTSWAP_SCHEMATHESIS_EXAMPLES", "5"))

# Schema-valid requests that a business rule refuses with a documented 400, because JSON Schema cannot say it:
# an artifact or test set must be a real model / .npz; an upload session's part numbers must be within its
# part_count, and its parts sent before it completes; an expiry must be in the future; a token's user must
# exist; a desired-state change needs at least one filter, a known model and rollback for an older version; a
# device_id in an update must be the URL's; a distribution's strategy_config and success_criteria are checked
# per strategy, it needs target devices that can run the version (and a target for a model no device has), and
# an A/B test two versions of one model; a rollback needs a later version and devices running it.
# Everything else schema-valid must be accepted.
BUSINESS_RULE_400 = {
    "POST /api/v1/models": "INVALID_ARTIFACT, EMPTY_ARTIFACT, CHECKSUM_MISMATCH, tensor schemas",
    "POST /api/v1/models/{name}/test-sets": "INVALID_TEST_SET",
    "POST /api/v1/uploads": "ARTIFACT_TOO_LARGE, FRAMEWORK_MISMATCH, tensor schemas",
    "POST /api/v1/uploads/{session_id}/parts": "part numbers beyond the session's part_count",
    "POST /api/v1/uploads/{session_id}/complete": "UPLOAD_INCOMPLETE (no part was sent), INVALID_ARTIFACT",
    # Input profiles are checked against the model itself: its inputs, ranks, fixed dims, dtypes, test sets.
    "PUT /api/v1/models/{name}/input-profiles": "a profile that contradicts the model",
    "PUT /api/v1/models/{name}/versions/{version}/input-profiles": "a profile that contradicts the model",
    "POST /api/v1/models/{model_id}/validate": "input_profiles that contradict the model",
    "PUT /api/v1/models/{name}/output-tolerances": "an output the model does not have",
    "POST /api/v1/enrollment-keys": "expires_at in the past",
    "POST /api/v1/tokens": "expires_at in the past, unknown username",
    "POST /api/v1/devices/desired": "no filter at all, ROLLBACK_NOT_MARKED, TOO_MANY_MODELS",
    "PUT /api/v1/devices/{device_id}/desired": "ROLLBACK_NOT_MARKED, TOO_MANY_MODELS",
    "POST /api/v1/devices/desired/remove": "no filter at all, an unknown model",
    "POST /api/v1/devices/{device_id}/desired/remove": "an unknown model",
    "PUT /api/v1/devices/{device_id}": "a device_id other than the URL's (no renames)",
    "POST /api/v1/distributions": "strategy_config, success_criteria, NO_TARGET_DEVICES, VERSION_NOT_DISTRIBUTABLE, "
                                  "INSTALL_NEEDS_TARGET, AB_TEST_ACROSS_MODELS",
    "POST /api/v1/models/{name}/versions/{version}/rollback": "NOTHING_TO_ROLL_BACK, NO_TARGET_DEVICES",
}


def _config(token: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": 13,
        "headers": {"Authorization": f"Token {token}"},
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # NUL is refused everywhere by design (PostgreSQL cannot store it; tests/test_untrusted_input.py),
            # a rule JSON Schema has no word for.
            "allow-x00": False,
        },
        "checks": {"enabled": True},  # --checks all: every check schemathesis has, server errors to auth
        # One thread: two made CPython 3.11.7's compile() fail at random ("AST constructor recursion depth
        # mismatch", a shared counter fixed in later 3.11 releases) when schemathesis builds its generators.
        "workers": 1,
        "operations": [
            {"include-name": operation,
             "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404",
                                                                            "409", "429"]}}}
            for operation in BUSINESS_RULE_400
        ],
    })


def _run(schema) -> tuple[list[str], set[str], events.EngineFinished]:
    """Runs every phase and check; gives the violations found, the operations exercised and the final event."""
    found, exercised, finished = [], set(), None
    for event in from_schema(schema).execute():
        if isinstance(event, events.EngineFinished):
            finished = event
        elif isinstance(event, events.ScenarioFinished):
            exercised.update(case.value.operation.label for case in event.recorder.cases.values())
            for case_id, checks in event.recorder.checks.items():
                interaction = event.recorder.interactions.get(case_id)
                response = interaction.response if interaction else None
                answer = f"{response.status_code} {response.content[:300]!r}" if response else "no response"
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(f"{event.recorder.label} [{check.name}] {failure.title}: {failure.message}\n"
                                     f"    {check.failure_info.code_sample}\n    -> {answer}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            found.append(f"schemathesis could not run: {event!r}")
    return found, exercised, finished


def _seed(make_fleet, make_version) -> None:  # noqa: F811
    """What the lists then show with every kind of null: versions, a validation, a fleet, a running canary."""
    old = make_version(name="resnet", version="1.0.0")
    ValidationReport.objects.create(version=old, status=ValidationReport.Status.PASSED)
    make_fleet({"eu": 3, "us": 3}, running=old)
    canary = distribution_create(version=make_version(name="resnet", version="1.1.0"), strategy="canary",
                                 config={"percent": 50})
    distribution_advance(distribution_id=canary.pk)


@pytest.mark.slow
def test_it_keeps_the_openapi_contract(transactional_db, make_user, make_fleet, make_version):  # noqa: F811
    admin = make_user(Role.ADMIN)
    _seed(make_fleet, make_version)
    _token, key = api_token_create(user=admin, name="schemathesis", created_by=admin, expires_at=None)
    # Throttles have their own tests; here they would only turn the later examples into 429s.
    unthrottled = {"THROTTLE_UPLOAD": "100000/hour", "THROTTLE_DISTRIBUTION_CREATE": "100000/hour",
                   "THROTTLE_MONITOR": "100000/minute"}

    with gunicorn_server(env=unthrottled, workers=2) as (base_url, _process):
        schema = schemathesis.openapi.from_url(f"{base_url}/api/schema/", config=_config(key))
        failures, exercised, finished = _run(schema)

    assert not failures, f"{len(failures)} contract violations:\n" + "\n".join(failures)
    assert finished.stop_reason == StopReason.COMPLETED
    assert exercised == {result.ok().label for result in schema.get_all_operations()}
