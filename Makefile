# HotSwap: `make run` starts the whole product on embedded defaults; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench bench-upload bench-checkin bench-telemetry bench-validation bench-rollback bench-distribution bench-metrics install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The device package (device/: agent, simulator, protocol) is its own distribution; the server imports its protocol.
# So is the `hotswap` command line (cli/), installed here too so `make run` users have it in .venv/bin.
$(VENV)/.installed: $(VENV)/bin/python requirements.txt device/pyproject.toml cli/pyproject.toml
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e ./device
	$(PY) -m pip install --quiet --no-deps -e ./cli
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## run: web console + API (gunicorn), Celery worker and beat, on embedded PostgreSQL/Redis and local storage
# exec: runstack replaces the recipe's shell, so the SIGTERM make forwards to its child reaches it directly.
run: install
	exec $(PY) manage.py runstack

## test: ruff, then the whole suite with coverage, on real PostgreSQL, Redis, SeaweedFS and Celery,
## one pytest-xdist worker per core (TEST_WORKERS; a test file stays on one worker: its fixtures are shared)
TEST_WORKERS ?= 2
test: install-dev browser wrk nginx
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --cov --cov-report=term --cov-report=xml:var/coverage.xml $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

# $(call debian_package,PACKAGE,BINARY,SKIP_VARIABLE,WHAT_NEEDS_IT): apt-get installs PACKAGE when BINARY is
# missing, as root (elsewhere it says what will not run); SKIP_VARIABLE=1 skips it.
define debian_package
	@if [ ! -x $(2) ] && [ "$$$(3)" != 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian's $(1) for $(4)..."; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
	  else \
	    echo "$(1) is missing and this is not root: $(4) will not run (apt-get install $(1))."; \
	  fi; \
	fi
endef

## browser: Debian's chromium for the console's browser tests, installed when missing (HOTSWAP_SKIP_BROWSER=1: not)
.PHONY: browser
browser:
	$(call debian_package,chromium,/usr/bin/chromium,HOTSWAP_SKIP_BROWSER,the browser tests)

## nginx: Debian's nginx for the reverse-proxy test (deploy/nginx/), installed when missing (HOTSWAP_SKIP_NGINX=1: not)
.PHONY: nginx
nginx:
	$(call debian_package,nginx,/usr/sbin/nginx,HOTSWAP_SKIP_NGINX,the reverse-proxy test)

## wrk: Debian's wrk for the check-in bench (tests/bench runs it in smoke mode), installed when missing (as root)
.PHONY: wrk
wrk: install
	@command -v wrk >/dev/null || $(PY) bench/checkin.py --install-wrk

## bench: every benchmark below (tests/bench runs each with --smoke: tiny sizes, a few seconds, figures not judged)
bench: bench-upload bench-checkin bench-telemetry bench-validation bench-rollback bench-distribution bench-metrics

## bench-upload: the hotswap CLI's direct upload (a session) of 2 GB vs boto3 multipart, the web worker's RSS, a resume after a kill
bench-upload: install-dev
	$(PY) bench/upload.py $(BENCH_ARGS)

## bench-checkin: device check-ins/s and p50/p99 (304 path; with a metric window) vs a trivial view, 10,000 devices, wrk
bench-checkin: install-dev
	$(PY) bench/checkin.py $(CHECKIN_BENCH_ARGS)

## bench-telemetry: fleet-wide telemetry aggregates for 100,000 devices (rollup time, query latency)
bench-telemetry: install-dev
	$(PY) bench/telemetry.py $(TELEMETRY_BENCH_ARGS)

## bench-validation: validation latency vs a bare onnxruntime loop; whole validation of a ~100 MB model
bench-validation: install-dev
	$(PY) bench/validation.py $(VALIDATION_BENCH_ARGS)

## bench-rollback: 10,000 simulated devices: first degraded window → rollback in check-in answers (≤ 10 s); judge query time per stage
bench-rollback: install-dev
	$(PY) bench/rollback.py $(ROLLBACK_BENCH_ARGS)

## bench-distribution: creating a distribution over 100,000 and 1,000,000 devices (target: 1,000,000 in ≤ 60 s); first offer, rollback
bench-distribution: install-dev
	$(PY) bench/distribution.py $(DISTRIBUTION_BENCH_ARGS)

## bench-metrics: GET /metrics on a 100,000-device installation: the domain metrics' aggregation from PostgreSQL, uncached and cached
bench-metrics: install-dev
	$(PY) bench/metrics.py $(METRICS_BENCH_ARGS)

clean:
	rm -rf var/test var/bench .pytest_cache
