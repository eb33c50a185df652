"""Assignment's state machine: one device's part in a distribution, from pending to its outcome.

The bulk SQL of rollouts (planning.py, services.py) moves thousands of assignments per statement, so
there is no per-row service here: the statements take their source states, target states and the
install-report mapping from this module as parameters (never as string literals in SQL), and the map
below says which moves exist.
"""

from __future__ import annotations

from rollouts.models import Assignment

A = Assignment.State

# Offered to the device, no outcome yet ("in flight"): an install report or the running version moves it on.
IN_FLIGHT = (A.OFFERED, A.DOWNLOADING, A.INSTALLED)
# Not finished: not offered yet, or in flight. A stage's installs are done when none of its assignments is.
UNFINISHED = (A.PENDING, *IN_FLIGHT)
FAILED = (A.FAILED, A.TIMED_OUT)
# Outcomes of an offer: the version runs, or it did not get there.
FINISHED = (A.ACTIVE, *FAILED)
# Left the distribution without being offered (or replaced by an A/B winner's assignment): not counted.
NOT_COUNTED = (A.SUPERSEDED, A.CANCELLED)
# Its version was offered to the device (what a rollback must undo).
OFFERED_ONCE = tuple(state for state in A if state not in (A.PENDING, *NOT_COUNTED))

# Install report status (device protocol) -> the assignment's state.
REPORT_STATES: dict[str, str] = {
    "downloading": A.DOWNLOADING, "installed": A.INSTALLED, "active": A.ACTIVE, "failed": A.FAILED,
    "refused": A.FAILED, "rolled_back": A.FAILED,
}
# Reports that end an install: the assignment gets its finished_at.
FINAL_REPORTS = tuple(status for status, state in REPORT_STATES.items() if state in FINISHED)

TRANSITIONS: dict[str, set[str]] = {
    # Offered (or active at once: the device already runs the version), or leaving unoffered.
    A.PENDING: {A.OFFERED, A.ACTIVE, A.CANCELLED, A.SUPERSEDED},
    # Reports move it along; a retry offers again; no outcome in time: timed out.
    A.OFFERED: {A.OFFERED, A.DOWNLOADING, A.INSTALLED, A.ACTIVE, A.FAILED, A.TIMED_OUT, A.ROLLED_BACK, A.SUPERSEDED},
    A.DOWNLOADING: {A.OFFERED, A.INSTALLED, A.ACTIVE, A.FAILED, A.TIMED_OUT, A.ROLLED_BACK, A.SUPERSEDED},
    A.INSTALLED: {A.OFFERED, A.DOWNLOADING, A.ACTIVE, A.FAILED, A.TIMED_OUT, A.ROLLED_BACK, A.SUPERSEDED},
    A.ACTIVE: {A.ROLLED_BACK, A.SUPERSEDED},
    # A failed install with attempts left is offered again.
    A.FAILED: {A.OFFERED, A.ACTIVE, A.ROLLED_BACK, A.SUPERSEDED},
    A.TIMED_OUT: {A.ROLLED_BACK, A.SUPERSEDED},
    A.ROLLED_BACK: set(),
    A.SUPERSEDED: set(),
    A.CANCELLED: set(),
}


def sources_of(*targets: str) -> list[str]:
    """The states from which every one of `targets` may be reached: the WHERE of a bulk move."""
    return [state for state, reachable in TRANSITIONS.items() if all(target in reachable for target in targets)]


def report_case(column: str) -> tuple[str, dict[str, str]]:
    """A CASE over an install report's status giving the assignment state, with its named parameters."""
    sql = " ".join(f"WHEN %(report_{n})s THEN %(state_{n})s" for n in range(len(REPORT_STATES)))
    params = {}
    for n, (status, state) in enumerate(REPORT_STATES.items()):
        params[f"report_{n}"], params[f"state_{n}"] = status, str(state)
    return f"CASE {column} {sql} END", params
