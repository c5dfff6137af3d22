# voxnode — build, test and lab entry points. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       := .venv
PY         := $(VENV)/bin/python
SYSPYTHON  := /usr/bin/python3
# Debian packages the tests need (the lab and image targets add their own).
APT_TEST   := python3-venv python3-dev gcc iproute2 procps util-linux nftables iptables keepalived iputils-ping

.PHONY: help setup apt venv test test-unit test-netns lint fmt clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: apt venv ## install Debian packages and the .venv (idempotent)

# Install the Debian packages of list $(1) that are missing; a no-op when all are there.
apt_install = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

apt:
	@$(call apt_install,$(APT_TEST))

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(SYSPYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

lint: setup ## ruff and mypy (strict on agent/ and ha/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff check --fix .

test: setup lab-apt lint ## the whole suite: lint, unit, namespace (root) and lab node tests
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-netns: setup
	$(PY) -m pytest -q tests/netns

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# --- lab: two systemd-nspawn nodes + a client on 10.77.0.0/24 (image/lab.py; needs root) -----
# Host packages the lab needs; the rootfs itself comes from the same apt mirror (mmdebstrap).
APT_LAB    := mmdebstrap systemd-container iproute2 util-linux procps iputils-ping openvpn kmod
# lab-down/-status must work without the .venv too: image.lab uses only the standard library
LABPY       = $(shell test -x $(PY) && echo $(PY) || echo $(SYSPYTHON))

.PHONY: lab lab-apt lab-down lab-status test-node

lab-apt:
	@$(call apt_install,$(APT_LAB))

lab: setup lab-apt ## build the lab rootfs (cached) and start node1, node2 and the client
	$(PY) -m image.lab up

lab-down: ## stop the lab and remove its namespaces, containers and node roots
	$(LABPY) -m image.lab down

lab-status: ## what runs in the lab (containers, addresses, agents)
	$(LABPY) -m image.lab status

test-node: setup lab-apt ## node tests: starts the lab once, removes it at the end (root)
	$(PY) -m pytest -q tests/node
