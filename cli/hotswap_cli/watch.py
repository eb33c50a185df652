"""Following what the server does next: a version's validation, a distribution's stages, until an outcome.

Each follower polls the API, draws the state (live on a terminal, a line per change in a CI log) and answers
the outcome's exit code (exitcodes.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from hotswap_cli import exitcodes
from hotswap_cli.api import Api, ApiError
from hotswap_cli.output import Output

VERSION_OUTCOMES = {"passed": exitcodes.OK, "failed": exitcodes.VALIDATION_FAILED,
                    "corrupt": exitcodes.VALIDATION_FAILED, "needs_approval": exitcodes.NEEDS_APPROVAL}
REPORT_OUTCOMES = {"passed": exitcodes.OK, "failed": exitcodes.VALIDATION_FAILED,
                   "error": exitcodes.VALIDATION_FAILED, "not_executed": exitcodes.NEEDS_APPROVAL}
COUNTDOWN = re.compile(r"\(\d+:\d\d:\d\d left\)")  # a soak's time left, in what a distribution waits for
LOG_EVERY_SECONDS = 60
OUTAGE_PATIENCE_SECONDS = 120
DISTRIBUTION_OUTCOMES = {"completed": exitcodes.OK, "rolled_back": exitcodes.ROLLED_BACK,
                         "aborted": exitcodes.ABORTED}


class TimedOut(Exception):
    """--timeout passed before the outcome was known."""


class Follower:
    """Polls `fetch` every `interval` s until `outcome(state)` is not None; draws `render(state)` meanwhile."""

    def __init__(self, output: Output, *, interval: float, timeout: float | None):
        self.output, self.interval = output, interval
        self.deadline = time.monotonic() + timeout if timeout else None
        self.outage_since: float | None = None

    def run(self, fetch: Callable[[], Any], outcome: Callable[[Any], int | None], render: Callable[[Any], Any],
            line: Callable[[Any], str]) -> tuple[Any, int]:
        state = fetch()
        last_key, last_printed = None, 0.0
        with Live(render(state), console=self.output.err, transient=False, auto_refresh=True,
                  refresh_per_second=4) if self.output.live else _NoLive() as live:
            while True:
                code = outcome(state)
                if self.output.live:
                    live.update(render(state))
                else:  # a CI log: a line when something changed (a countdown alone: once a minute)
                    text = line(state)
                    key = COUNTDOWN.sub("", text)
                    if key != last_key or time.monotonic() - last_printed >= LOG_EVERY_SECONDS:
                        self.output.note(text)
                        last_key, last_printed = key, time.monotonic()
                if code is not None:
                    return state, code
                if self.deadline and time.monotonic() > self.deadline:
                    raise TimedOut(line(state))
                time.sleep(self.interval)
                state = self._fetch_again(fetch, state)

    def _fetch_again(self, fetch: Callable[[], Any], state: Any) -> Any:
        """The next state; a server unreachable or failing (5xx) for less than OUTAGE_PATIENCE_SECONDS keeps the
        last one (a restart or a blip must not fail a CI job that follows a rollout for an hour)."""
        try:
            state = fetch()
            self.outage_since = None
        except ApiError as exc:
            if exc.code != "UNREACHABLE" and exc.status < 500:
                raise
            self.outage_since = self.outage_since or time.monotonic()
            if time.monotonic() - self.outage_since > OUTAGE_PATIENCE_SECONDS:
                raise
        return state


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# --- validation ------------------------------------------------------------------------------------------------

def validation_wait(api: Api, output: Output, model_id: str, *, report_id: int | None = None,
                    interval: float = 1.0, timeout: float | None = None) -> tuple[dict, dict | None, int]:
    """Waits for the validation of `model_id` (the report `report_id`, else whatever settles the version's
    status); answers (version, latest report, exit code)."""
    started = time.monotonic()

    def fetch() -> dict:
        version = api.get(f"/models/{model_id}")
        report = _latest_report(api, model_id)
        return {"version": version, "report": report}

    def outcome(state: dict) -> int | None:
        report = state["report"]
        if report_id is not None:
            if report and report["validation_id"] == report_id and report["status"] in REPORT_OUTCOMES:
                return REPORT_OUTCOMES[report["status"]]
            return None
        return VERSION_OUTCOMES.get(state["version"]["status"])

    def line(state: dict) -> str:
        report = state["report"]
        run = f", report #{report['validation_id']} {report['status']}" if report else ""
        return f"validation of {model_id}: version {state['version']['status']}{run}"

    def render(state: dict):
        text = f"{line(state)}  ({int(time.monotonic() - started)} s)"
        return Spinner("dots", text=Text(text)) if outcome(state) is None else Text(text)

    state, code = Follower(output, interval=interval, timeout=timeout).run(fetch, outcome, render, line)
    return state["version"], state["report"], code


def _latest_report(api: Api, model_id: str) -> dict | None:
    try:
        return api.get(f"/models/{model_id}/validation-report")
    except ApiError as exc:
        if exc.code == "NO_VALIDATION_REPORT":
            return None
        raise


def report_render(output: Output, report: dict | None) -> None:
    """A validation report: its steps and gates, then the summary (stdout)."""
    if not report:
        output.out.print("No validation report yet.")
        return
    output.out.print(f"[bold]{report['model_id']}[/bold]: validation #{report['validation_id']} "
                     f"[bold]{report['status']}[/bold] (attempts {report.get('attempts')})")
    marks = {"passed": "[green]✓[/green]", "failed": "[red]✗[/red]"}
    steps = Table("", "step", "ms", "detail", box=None, header_style="bold")
    for step in report.get("steps") or []:
        steps.add_row(marks.get(step.get("status"), "·"), step.get("name", ""),
                      f"{step.get('duration_ms') or 0:.0f}", Text(step.get("detail") or step.get("status", "")))
    if report.get("steps"):
        output.out.print(steps)
    gates = Table("", "gate", "threshold", "measured", box=None, header_style="bold")
    for gate in report.get("gates") or []:
        mark = {True: marks["passed"], False: marks["failed"]}.get(gate.get("passed"), "·")
        gates.add_row(mark, gate.get("name", ""), _number(gate.get("threshold")), _number(gate.get("measured")))
    if report.get("gates"):
        output.out.print(gates)
    if report.get("summary"):
        output.out.print(Text(report["summary"]))


def _number(value) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


# --- distributions ---------------------------------------------------------------------------------------------

def distribution_watch(api: Api, output: Output, distribution_id: int, *, interval: float = 2.0,
                       timeout: float | None = None) -> tuple[dict, int]:
    """Follows a distribution until it completes (0), is rolled back (5), halted (6) or aborted (7)."""

    def outcome(status: dict) -> int | None:
        if status["status"] in DISTRIBUTION_OUTCOMES:
            return DISTRIBUTION_OUTCOMES[status["status"]]
        if status["status"] == "paused" and distribution_halted(api, distribution_id):
            return exitcodes.HALTED
        return None

    return Follower(output, interval=interval, timeout=timeout).run(
        lambda: api.get(f"/distributions/{distribution_id}/status"), outcome, status_render, status_line)


def distribution_halted(api: Api, distribution_id: int) -> bool:
    """Paused by the orchestrator (failed installs, a failing verdict under the manual rollback policy), not by an
    operator: the latest pause of the distribution itself in its audit trail has no user."""
    path = f"/distributions/{distribution_id}/transitions"
    count = api.get(path, page_size=1)["count"]
    page_size = 500
    last_page = api.get(path, page_size=page_size, page=max((count + page_size - 1) // page_size, 1))["results"]
    pauses = [t for t in last_page if t["stage"] is None and t["to_status"] == "paused"]
    return bool(pauses) and pauses[-1]["actor"] == "orchestrator"


def status_line(status: dict) -> str:
    """One line for a CI log: the distribution's status, the current stage's progress, what it waits for."""
    stage = next((s for s in status["stages"] if s["index"] == status.get("current_stage")), None)
    parts = [f"distribution {status['id']}: {status['status']}"]
    if stage:
        p = stage["progress"]
        parts.append(f"stage {stage['index'] + 1}/{len(status['stages'])} {stage['name']} {stage['status']} "
                     f"({p['active']}/{p['targeted']} active, {p['failed']} failed)")
    if status.get("waiting_for"):
        parts.append(f"waiting for {status['waiting_for']}")
    elif status.get("status_reason") and status["status"] != "running":
        parts.append(status["status_reason"])
    return "; ".join(parts)


def status_render(status: dict):
    """Every stage with a progress bar of its devices, the live metrics, what the distribution waits for."""
    table = Table("stage", "status", "devices", "", "verdict", box=None, header_style="bold")
    for stage in status["stages"]:
        p = stage["progress"]
        marker = "▶ " if stage["index"] == status.get("current_stage") else "  "
        table.add_row(f"{marker}{stage['name']}", stage["status"],
                      ProgressBar(total=max(p["targeted"], 1), completed=p["active"], width=30),
                      f"{p['active']}/{p['targeted']} active, {p['installing']} installing, {p['failed']} failed",
                      stage.get("verdict") or "")
    total = status["progress"]
    head = Text.assemble((f"distribution {status['id']} ", "bold"), (status["status"], "bold cyan"),
                         f"  {total['active']}/{total['targeted']} devices active")
    lines: list[Any] = [head, table]
    if metrics := status.get("live_metrics"):
        new, base = metrics["new"], metrics["baseline"]
        lines.append(Text(f"live: p99 {_number(new['latency_p99_ms'])} ms (baseline {_number(base['latency_p99_ms'])}),"
                          f" errors {_number(new['error_rate'])} (baseline {_number(base['error_rate'])}), "
                          f"{new['inferences']} inferences on {new['devices']} devices"))
    if status.get("waiting_for"):
        lines.append(Text(f"waiting for {status['waiting_for']}"))
    elif status.get("status_reason"):
        lines.append(Text(status["status_reason"]))
    return Group(*lines)
