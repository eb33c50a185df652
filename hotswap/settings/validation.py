"""Model validation: default quality gates (MISSION.md), benchmark sizes, the child process's limits."""

from hotswap.settings.env import env

# Defaults; a model's quality_gates and a request's overrides take precedence (per device class too).
VALIDATION_GATES = {
    "max_latency_p99_ms": env.float("GATE_MAX_LATENCY_P99_MS", default=100.0),
    "min_throughput_ips": env.float("GATE_MIN_THROUGHPUT_IPS", default=10.0),
    "max_memory_mb": env.float("GATE_MAX_MEMORY_MB", default=2048.0),
    "min_accuracy": env.float("GATE_MIN_ACCURACY", default=0.90),
    "max_error_rate": env.float("GATE_MAX_ERROR_RATE", default=0.01),
    "max_latency_increase": env.float("GATE_MAX_LATENCY_INCREASE", default=0.20),
    "max_accuracy_drop": env.float("GATE_MAX_ACCURACY_DROP", default=0.10),
    # Share of test samples whose outputs are within tolerance of the expected outputs (non-classifiers).
    "min_output_match": env.float("GATE_MIN_OUTPUT_MATCH", default=0.90),
    # Share of samples whose outputs agree with the previous version's; off unless a model asks for it.
    "min_baseline_agreement": None,
}
VALIDATION_WARMUP_RUNS = env.int("VALIDATION_WARMUP_RUNS", default=10)
VALIDATION_BENCHMARK_RUNS = env.int("VALIDATION_BENCHMARK_RUNS", default=100)
VALIDATION_INTRA_OP_THREADS = env.int("VALIDATION_INTRA_OP_THREADS", default=1)
VALIDATION_MEMORY_MB = env.int("VALIDATION_MEMORY_MB", default=4096)
VALIDATION_CPU_SECONDS = env.int("VALIDATION_CPU_SECONDS", default=300)
VALIDATION_WALL_SECONDS = env.int("VALIDATION_WALL_SECONDS", default=600)
# A run still "running" this long after it started belongs to a worker that died: it may be claimed again.
VALIDATION_STALE_AFTER_SECONDS = env.int("VALIDATION_STALE_AFTER_SECONDS", default=900)
