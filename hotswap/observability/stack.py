"""What runstack gives its children for observability: readable logs, and one fresh Prometheus multiprocess dir."""

from __future__ import annotations

from pathlib import Path

MULTIPROC_SUBDIR = "prometheus-multiproc"


def stack_environment(child_env: dict[str, str], var_dir: Path) -> dict[str, str]:
    """Sets LOG_FORMAT=console unless chosen, and PROMETHEUS_MULTIPROC_DIR (emptied of old values) for the workers.

    Every gunicorn worker and Celery process writes its in-process metrics there and /metrics sums
    them; values of a previous run would be counted again, so the directory starts empty.
    """
    child_env.setdefault("LOG_FORMAT", "console")
    directory = Path(child_env.get("PROMETHEUS_MULTIPROC_DIR") or var_dir / MULTIPROC_SUBDIR)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    child_env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return child_env
