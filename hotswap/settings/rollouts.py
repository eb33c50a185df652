"""Rollout settings: the orchestrator's tick, install timeouts and retries, limits, the stage judge."""

from hotswap.settings.env import env

ROLLOUT_TICK_SECONDS = env.float("ROLLOUT_TICK_SECONDS", default=5.0)
ROLLOUT_MAX_CONCURRENT = env.int("ROLLOUT_MAX_CONCURRENT", default=20)
ROLLOUT_INSTALL_TIMEOUT_SECONDS = env.int("ROLLOUT_INSTALL_TIMEOUT_SECONDS", default=900)
ROLLOUT_MAX_ATTEMPTS = env.int("ROLLOUT_MAX_ATTEMPTS", default=3)
ROLLOUT_FAILURE_THRESHOLD = env.float("ROLLOUT_FAILURE_THRESHOLD", default=0.1)
# Dotted path of the callable that judges a soaking stage (rollouts/judges.py).
ROLLOUT_JUDGE = env.str("ROLLOUT_JUDGE", default="rollouts.health.health_judge")
# Alerts (automatic rollback, halts, inconclusive verdicts) are POSTed here as JSON when set.
ROLLOUT_ALERT_WEBHOOK_URL = env.str("ROLLOUT_ALERT_WEBHOOK_URL", default="")
# How long the devices' metric windows are (the reference agent's default): a stage's first windows reach
# the server one window and one poll (and one flush) after its installs, so the judge waits that long
# before it calls a soak with too little data inconclusive.
ROLLOUT_TELEMETRY_WINDOW_SECONDS = env.int("ROLLOUT_TELEMETRY_WINDOW_SECONDS", default=60)
