"""The `hotswap` command line: login, models, devices and distributions, each with --json and --profile."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click
import httpx
from rich import filesize

from hotswap_cli import exitcodes
from hotswap_cli.api import Api, ApiError, unreachable
from hotswap_cli.config import DEFAULT_PROFILE, ConfigError, Profile, profile_load, profile_save
from hotswap_cli.output import Output
from hotswap_cli.upload import Uploader
from hotswap_cli.watch import (
    TimedOut,
    distribution_watch,
    report_render,
    status_line,
    status_render,
    validation_wait,
)

FRAMEWORKS = {".onnx": "onnx", ".tflite": "tflite", ".pt": "pytorch", ".pth": "pytorch", ".mlmodel": "coreml",
              ".mlpackage": "coreml"}
CONFIGURATION = """Configuration: HOTSWAP_URL and HOTSWAP_TOKEN (a JWT, or an API token hs_...), else the profile
that `hotswap login` saved (--profile NAME or HOTSWAP_PROFILE; file: HOTSWAP_CONFIG, default
~/.config/hotswap/config.json)."""


def _fail(output: Output, code: str, message: str, exit_code: int) -> None:
    output.error({"error": {"code": code, "message": message, "details": []}})
    sys.exit(exit_code)


def api_command(group: click.Group, name: str, **settings):
    """A subcommand of `group` that talks to the API: adds --json and --profile, hands the function an Api and an
    Output, turns every failure into the API's code and message (never a traceback) and the exit code."""

    def decorate(function):
        @group.command(name, **settings)
        @click.option("--json", "json_mode", is_flag=True, help="Print the result as JSON (and no progress).")
        @click.option("--profile", default=None, help="Profile saved by `hotswap login` (default: HOTSWAP_PROFILE "
                                                      "or 'default').")
        @functools.wraps(function)
        def command(json_mode: bool, profile: str | None, **params):
            output = Output(json_mode=json_mode)
            try:
                api = Api(profile_load(profile))
                try:
                    code = function(api, output, **params)
                finally:
                    api.close()
            except ConfigError as exc:
                _fail(output, "NOT_CONFIGURED", str(exc), exitcodes.ERROR)
            except ApiError as exc:
                output.error(exc.body or {"error": {"code": exc.code, "message": exc.message, "details": []}})
                sys.exit(exitcodes.ERROR)
            except OSError as exc:  # the file given, or the profile's directory
                _fail(output, "LOCAL_ERROR", str(exc), exitcodes.ERROR)
            except TimedOut as exc:
                _fail(output, "TIMED_OUT", f"--timeout passed; last seen: {exc}", exitcodes.TIMED_OUT)
            except KeyboardInterrupt:
                output.note("interrupted: run the same command again to resume an upload")
                sys.exit(exitcodes.INTERRUPTED)
            sys.exit(code or exitcodes.OK)

        return command

    return decorate


@click.group(help=f"HotSwap from the command line and CI.\n\n{CONFIGURATION}\n\n{exitcodes.HELP}",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    pass


# --- login -----------------------------------------------------------------------------------------------------

@cli.command(help="Log in and save a profile (0600): a username and password (a JWT pair, renewed by itself) "
                  "or an API token (--token hs_...).")
@click.option("--url", default=lambda: os.environ.get("HOTSWAP_URL", "http://127.0.0.1:8000"),
              show_default="HOTSWAP_URL or http://127.0.0.1:8000", help="The server's base URL.")
@click.option("--username", help="Prompted for when neither it nor --token is given.")
@click.option("--password", envvar="HOTSWAP_PASSWORD", help="Or HOTSWAP_PASSWORD; prompted for when missing.")
@click.option("--token", help="An API token (hs_...) to save instead of logging in with a password.")
@click.option("--profile", default=DEFAULT_PROFILE, show_default=True, help="The profile's name.")
@click.option("--json", "json_mode", is_flag=True, help="Print the result as JSON.")
def login(url: str, username: str | None, password: str | None, token: str | None, profile: str,
          json_mode: bool) -> None:
    output = Output(json_mode=json_mode)
    saved = Profile(name=profile, url=url.rstrip("/"))
    try:
        if token:
            saved.token = token
        else:
            username = username or click.prompt("Username", err=True)
            password = password or click.prompt("Password", hide_input=True, err=True)
            try:
                response = httpx.post(f"{saved.url}/api/v1/auth/token", timeout=30,
                                      json={"username": username, "password": password})
            except httpx.HTTPError as exc:
                raise unreachable(saved.url, exc) from exc
            if response.status_code != 200:
                raise ApiError.from_response(response)
            saved.token, saved.refresh = response.json()["access"], response.json()["refresh"]
        api = Api(saved)
        try:
            me = api.get("/auth/me")
        finally:
            api.close()
    except ApiError as exc:
        output.error(exc.body)
        sys.exit(exitcodes.ERROR)
    saved.username = me["username"]
    path = profile_save(saved)
    output.result({"profile": profile, "url": saved.url, "username": me["username"], "roles": me["roles"],
                   "auth_method": me["auth_method"], "config": str(path)},
                  lambda d: output.out.print(f"Logged in to {d['url']} as {d['username']} ({', '.join(d['roles'])})"
                                             f"; profile '{d['profile']}' saved in {d['config']}"))


# --- models ----------------------------------------------------------------------------------------------------

@cli.group(help="Model versions: upload, list, show, validate, validation reports.")
def models() -> None:
    pass


def _key_values(pairs: tuple[str, ...], option: str) -> dict:
    """KEY=VALUE options as a dict; a VALUE that parses as JSON (numbers, lists, true) is taken as such."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


@api_command(models, "upload", help="Upload a model version, with a progress bar (bytes, rate, ETA). Resumable: "
                                    "run the same command again after an interruption and only the missing parts "
                                    "are sent (servers with upload sessions). --wait: wait for the validation and "
                                    f"exit with its outcome.\n\n{exitcodes.HELP}")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (lowercase letters, digits, - and _).")
@click.option("--version", "version", required=True, help="Semantic version, e.g. 1.4.0.")
@click.option("--framework", type=click.Choice(["onnx", "tensorflow", "tflite", "pytorch", "coreml"]),
              help="Default: from the file's extension (.onnx, .tflite, .pt, .mlmodel).")
@click.option("--description", default=None)
@click.option("--task", default=None, help="classification, detection, segmentation, regression, generation, other.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--sha256", default=None, help="The file's SHA-256 if known (else computed here).")
@click.option("--wait", is_flag=True, help="Wait for the validation; exit 3 if it fails, 4 if it needs approval.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds (exit 8).")
@click.option("--parallel", type=click.IntRange(1, 32), default=8, show_default=True,
              help="Parts sent at once (upload sessions).")
@click.option("--limit-rate", type=click.IntRange(1), default=None, help="At most this many bytes per second.")
@click.option("--multipart", is_flag=True, help="Send the file through the API in one multipart POST /api/v1/models "
                                                "(a runner that cannot reach the object store; no resume).")
def models_upload(api: Api, output: Output, file: Path, name: str, version: str, framework: str | None,
                  description: str | None, task: str | None, tags: tuple[str, ...], sha256: str | None, wait: bool,
                  timeout: float | None, parallel: int, limit_rate: int | None, multipart: bool) -> int:
    framework = framework or FRAMEWORKS.get(file.suffix.lower())
    if not framework:
        raise click.UsageError(f"--framework is needed: {file.suffix or 'no extension'} says nothing about it.")
    fields = {"name": name, "version": version, "framework": framework, "description": description, "task": task,
              "tags": list(tags) or None}
    fields = {k: v for k, v in fields.items() if v is not None}
    outcome = Uploader(api, file, fields, output=output, parallel=parallel, limit_rate=limit_rate,
                       sha256=sha256, multipart=multipart).run()
    version_data = outcome.version
    already = (f"; {outcome.parts_already_there} of {outcome.part_count} parts were already stored"
               if outcome.parts_already_there else "")
    output.note(f"uploaded {version_data['model_id']}: {outcome.bytes_sent} bytes sent{already} "
                f"({outcome.method}); status {version_data['status']}")
    result = {"version": version_data, "upload": outcome.as_dict(), "validation": None}
    code = exitcodes.OK
    if wait:
        result["version"], result["validation"], code = validation_wait(api, output, version_data["model_id"],
                                                                         timeout=timeout)
    output.result(result, lambda d: (_version_render(output, d["version"]),
                                     wait and report_render(output, d["validation"])))
    return code


@api_command(models, "list", help="List model versions, newest first.")
@click.option("--name", default=None)
@click.option("--status", "statuses", multiple=True, help="uploaded, validating, passed, failed, needs_approval, "
                                                          "deprecated, corrupt (repeatable).")
@click.option("--framework", default=None)
@click.option("--tag", default=None)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
def models_list(api: Api, output: Output, name, statuses, framework, tag, page, page_size) -> None:
    found = api.get("/models", name=name, status=list(statuses), framework=framework, tag=tag, page=page,
                    page_size=page_size)
    columns = ["model_id", "status", "framework", "size", "uploaded", "distributable"]
    output.result(found, lambda d: _page(output, d, columns, lambda v: [
        v["model_id"], v["status"], v["framework"], filesize.decimal(v["size_bytes"]), v["uploaded_at"][:19],
        "yes" if v["distributable"] else "no"]))


@api_command(models, "show", help="One model version (MODEL_ID: name-version, e.g. resnet-1.0.0).")
@click.argument("model_id")
def models_show(api: Api, output: Output, model_id: str) -> None:
    output.result(api.get(f"/models/{model_id}"), lambda d: _version_render(output, d))


@api_command(models, "validate", help="Validate a version again on the worker (optionally with a test set and gate "
                                      f"overrides); --wait for the outcome.\n\n{exitcodes.HELP}")
@click.argument("model_id")
@click.option("--test-set", default=None, help="Name of one of the model's test sets.")
@click.option("--gate", "gates", multiple=True, help="GATE=THRESHOLD, e.g. max_latency_p99_ms=50 (repeatable).")
@click.option("--wait", is_flag=True, help="Wait for the outcome; exit 3 if it fails, 4 if it needs approval.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds (exit 8).")
def models_validate(api: Api, output: Output, model_id: str, test_set, gates, wait, timeout) -> int:
    report = api.post(f"/models/{model_id}/validate", {"test_set": test_set, "gates": _key_values(gates, "--gate")})
    code = exitcodes.OK
    if wait:
        _version, report, code = validation_wait(api, output, model_id, report_id=report["validation_id"],
                                                 timeout=timeout)
    output.result(report, lambda d: report_render(output, d))
    return code


@api_command(models, "report", help="The latest validation report of a version (--all: every report).")
@click.argument("model_id")
@click.option("--all", "every", is_flag=True, help="Every report, newest first.")
def models_report(api: Api, output: Output, model_id: str, every: bool) -> None:
    if every:
        found = api.get(f"/models/{model_id}/validation-report", all="true", page_size=500)
        output.result(found, lambda d: _page(output, d, ["#", "status", "requested", "summary"], lambda r: [
            r["validation_id"], r["status"], r["requested_at"][:19], r["summary"][:80]]))
    else:
        output.result(api.get(f"/models/{model_id}/validation-report"), lambda d: report_render(output, d))


# --- devices ---------------------------------------------------------------------------------------------------

@cli.group(help="The device registry: list and show devices.")
def devices() -> None:
    pass


@api_command(devices, "list", help="List devices (filters as the API's).")
@click.option("--region", default=None)
@click.option("--device-type", default=None)
@click.option("--tag", default=None)
@click.option("--status", "statuses", multiple=True, help="active, offline, decommissioned (repeatable).")
@click.option("--model", default=None, help="Name of a model the devices run or should run.")
@click.option("--version", "version", default=None, help="model_id the devices run.")
@click.option("--desired-version", default=None, help="model_id the devices should run.")
@click.option("--search", default=None, help="Part of a device id or name.")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
def devices_list(api: Api, output: Output, region, device_type, tag, statuses, model, version, desired_version,
                 search, page, page_size) -> None:
    found = api.get("/devices", region=region, device_type=device_type, tag=tag, status=list(statuses), model=model,
                    version=version, desired_version=desired_version, search=search, page=page, page_size=page_size)
    output.result(found, lambda d: _page(output, d, ["device_id", "type", "region", "status", "models", "last seen"],
                                         lambda v: [v["device_id"], v["device_type"], v["region"], v["status"],
                                                    ", ".join(_slot_text(slot) for slot in v.get("slots") or []),
                                                    (v.get("last_seen") or "")[:19]]))


def _slot_text(slot: dict) -> str:
    """One model slot in a line: model, the version it runs, and what it should run when that differs."""
    running = (slot.get("running") or {}).get("version") or "-"
    desired = slot.get("desired") or {}
    wanted = "remove" if desired.get("action") == "remove" else desired.get("version")
    text = f"{slot['model']} {running}"
    if slot.get("state") not in ("in_sync", "unmanaged") and wanted:
        text += f" → {wanted} ({slot['state']})"
    return text


@api_command(devices, "show", help="One device: capabilities, health, what it runs and should run.")
@click.argument("device_id")
def devices_show(api: Api, output: Output, device_id: str) -> None:
    output.result(api.get(f"/devices/{device_id}"), lambda d: output.fields(d.items()))


# --- distributions ---------------------------------------------------------------------------------------------

@cli.group(help="Rollouts: create, follow and steer distributions.")
def distributions() -> None:
    pass


@api_command(distributions, "create", help="Create a distribution of a version to the devices a target selects "
                                           "(--watch: follow it to the end; exit codes as `watch`).\n\n"
                                           f"{exitcodes.HELP}")
@click.option("--version", "version", required=True, help="model_id to ship, e.g. resnet-1.1.0.")
@click.option("--version-b", default=None, help="model_id of the challenger (ab_test).")
@click.option("--strategy", type=click.Choice(["direct", "canary", "progressive", "regional", "ab_test"]),
              default=None, help="Default: chosen by the server from the number of devices.")
@click.option("--config", "config", multiple=True, help="Strategy setting KEY=VALUE, e.g. percent=10, soak=PT5M, "
                                                        "percentages=[10,50,100] (repeatable).")
@click.option("--region", "regions", multiple=True, help="Target region (repeatable).")
@click.option("--device-type", "device_types", multiple=True, help="Target device type (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Target tag (repeatable).")
@click.option("--device", "device_ids", multiple=True, help="Target device id (repeatable).")
@click.option("--min-memory-mb", type=int, default=None)
@click.option("--criterion", "criteria", multiple=True, help="Success criterion KEY=VALUE, e.g. max_error_rate=0.02.")
@click.option("--rollback-policy", type=click.Choice(["automatic", "manual"]), default=None)
@click.option("--install-timeout", type=click.IntRange(1), default=None,
              help="Seconds a device may take to report an install (server default 900).")
@click.option("--max-attempts", type=click.IntRange(1), default=None, help="Offers per device (server default 3).")
@click.option("--failure-threshold", type=click.FloatRange(0, 1), default=None,
              help="Share of failed installs that halts a stage (server default 0.1).")
@click.option("--name", default=None)
@click.option("--watch", is_flag=True, help="Follow it until it completes, is rolled back, halted or aborted.")
@click.option("--timeout", type=float, default=None, help="With --watch: give up after this many seconds (exit 8).")
def distributions_create(api: Api, output: Output, version, version_b, strategy, config, regions, device_types, tags,
                         device_ids, min_memory_mb, criteria, rollback_policy, install_timeout, max_attempts,
                         failure_threshold, name, watch, timeout) -> int:
    target = {"regions": list(regions), "device_types": list(device_types), "tags": list(tags),
              "device_ids": list(device_ids), "min_memory_mb": min_memory_mb}
    body = {"version": version, "version_b": version_b, "strategy": strategy,
            "strategy_config": _key_values(config, "--config"),
            "success_criteria": _key_values(criteria, "--criterion"),
            "target": {k: v for k, v in target.items() if v}, "rollback_policy": rollback_policy, "name": name,
            "install_timeout_seconds": install_timeout, "max_attempts": max_attempts,
            "failure_threshold": failure_threshold}
    created = api.post("/distributions", {k: v for k, v in body.items() if v is not None})
    output.note(f"distribution {created['id']} created: {created['strategy']} of {created['version']} to "
                f"{created['device_count']} devices ({created['strategy_reason'] or 'strategy given'})")
    if not watch:
        output.result(created, lambda d: output.out.print(d["id"]))
        return exitcodes.OK
    return _watch(api, output, created["id"], timeout)


@api_command(distributions, "list", help="List distributions, newest first.")
@click.option("--status", "statuses", multiple=True, help="scheduled, running, paused, completed, aborted, "
                                                          "rolled_back (repeatable).")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
def distributions_list(api: Api, output: Output, statuses, page, page_size) -> None:
    found = api.get("/distributions", status=list(statuses), page=page, page_size=page_size)
    output.result(found, lambda d: _page(output, d, ["id", "version", "strategy", "status", "devices", "created"],
                                         lambda v: [v["id"], v["version"], v["strategy"], v["status"],
                                                    v["device_count"], v["created_at"][:19]]))


@api_command(distributions, "status", help="Where a distribution is: every stage's progress, live metrics, what "
                                           "it waits for.")
@click.argument("distribution_id", type=int)
def distributions_status(api: Api, output: Output, distribution_id: int) -> None:
    output.result(api.get(f"/distributions/{distribution_id}/status"),
                  lambda d: output.out.print(status_render(d)))


@api_command(distributions, "watch", help="Follow a distribution live until it ends: exit 0 when it completes, 5 "
                                          "when it is rolled back, 6 when the orchestrator halts it, 7 when it is "
                                          "aborted (an operator's pause waits for the resume).\n\n"
                                          f"{exitcodes.HELP}")
@click.argument("distribution_id", type=int)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 8).")
@click.option("--interval", type=click.FloatRange(0.2), default=2.0, show_default=True, help="Seconds between polls.")
def distributions_watch(api: Api, output: Output, distribution_id: int, timeout, interval) -> int:
    return _watch(api, output, distribution_id, timeout, interval)


def _watch(api: Api, output: Output, distribution_id: int, timeout: float | None, interval: float = 2.0) -> int:
    status, code = distribution_watch(api, output, distribution_id, timeout=timeout, interval=interval)
    output.result(status, lambda d: output.out.print(status_line(d)))
    return code


def _action(name: str, help_text: str, *, reason: bool = True):
    @api_command(distributions, name, help=help_text)
    @click.argument("distribution_id", type=int)
    @click.option("--reason", default="", help="Why (kept in the audit trail).") if reason else \
        click.option("--winner", default=None, help="model_id of the A/B winner (A/B tests only).")
    def action(api: Api, output: Output, distribution_id: int, **body) -> None:
        done = api.post(f"/distributions/{distribution_id}/{name}", {k: v for k, v in body.items() if v})
        output.result(done, lambda d: output.out.print(f"distribution {d['id']}: {d['status']}"
                                                       + (f" ({d['status_reason']})" if d.get("status_reason") else "")
                                                       + (f"; {d['reverted_devices']} device(s) sent back"
                                                          if "reverted_devices" in d else "")))
    action.__name__ = f"distributions_{name}"
    return action


_action("approve", "Open the manual gate the distribution waits at (--winner for an A/B test).", reason=False)
_action("pause", "Pause a running distribution: no further stage starts.")
_action("resume", "Resume a paused distribution (a halt it was paused for is accepted).")
_action("abort", "Stop a distribution for good; devices keep what they installed.")
_action("rollback", "Send every device the distribution touched back to its previous version.")


# --- rendering -------------------------------------------------------------------------------------------------

def _version_render(output: Output, version: dict) -> None:
    output.fields((key, version.get(key)) for key in (
        "model_id", "status", "framework", "detected_format", "sha256", "sha256_verified", "size_bytes",
        "original_filename", "uploaded_by", "uploaded_at", "distributable", "tags", "description"))


def _page(output: Output, page: dict, columns: list[str], row) -> None:
    output.table(columns, (row(item) for item in page["results"]))
    output.note(f"{len(page['results'])} of {page['count']}" + (" (more: --page)" if page.get("next") else ""))


def main() -> None:
    cli(prog_name="hotswap")


if __name__ == "__main__":
    main()
