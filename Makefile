# voxnode — build, test and lab entry points. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       := .venv
PY         := $(VENV)/bin/python
SYSPYTHON  := /usr/bin/python3
# Debian packages the tests need (the lab and image targets add their own).
APT_TEST   := python3-venv python3-dev gcc iproute2 procps util-linux nftables iptables keepalived iputils-ping faketime \
             mariadb-server mariadb-backup mariadb-client rsync iputils-arping openssh-server \
             lsyncd

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

# the node's distribution (pyproject.toml: agent/, ha/) and the development tools' (lab/:
# voxnode-lab, voxnode-license-server, the image builders), both editable, one after the
# other (the tools use the node distribution's dependencies and declare none of their own)
$(VENV)/.installed: pyproject.toml lab/pyproject.toml
	@test -x $(PY) || $(SYSPYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# the development tools second: an older node distribution that carried their
	@# commands is replaced first, so its uninstall cannot take their scripts with it
	$(PY) -m pip install -q -e ./lab
	@touch $@

lint: setup ## ruff and mypy (strict on agent/, ha/, image/, lab/, license_server/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff check --fix .

test: setup lab-apt image-apt lint ## the whole suite: lint, unit, namespace (root), lab node and image tests
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-netns: setup
	$(PY) -m pytest -q tests/netns

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# --- lab: two systemd-nspawn nodes + a client on 10.77.0.0/24 (lab/; needs root) -----------
# Host packages the lab needs; the rootfs itself comes from the same apt mirror (mmdebstrap).
APT_LAB    := mmdebstrap systemd-container iproute2 util-linux procps iputils-ping openvpn kmod
# lab-down/-status must work without the .venv too: `python -m lab` needs the standard library
# and agent/errors.py only
LABPY       = $(shell test -x $(PY) && echo $(PY) || echo $(SYSPYTHON))

.PHONY: lab lab-apt lab-down lab-status test-node

lab-apt:
	@$(call apt_install,$(APT_LAB))

lab: setup lab-apt ## the appliance lab: node1 + node2 licensed and paired on 10.77.0.10, a client
	$(PY) -m lab up

lab-down: ## stop the lab and remove its namespaces, containers and node roots
	$(LABPY) -m lab down

lab-status: ## what runs in the lab (containers, addresses, agents)
	$(LABPY) -m lab status

test-node: setup lab-apt ## node tests: starts the lab once, removes it at the end (root)
	$(PY) -m pytest -q tests/node

# --- images: agent RPM, kickstarts, installer ISO, raw/qcow2 disk, AMI (image/*.py) ----------
# Each step records what it made, with sha256, for the next: out/rpm.json -> iso ->
# out/iso.json -> raw / ami -> out/packer/raw.json, out/packer/ami.json -> out/ami.json.
# Host tools for the image pipeline and its tests (QEMU boots, RPM build, ISO remaster).
APT_IMAGE  := xorriso isolinux syslinux-common syslinux-utils grub-efi-amd64-bin grub-pc-bin \
	grub-common mtools dosfstools isomd5sum rpm createrepo-c qemu-system-x86 qemu-utils ovmf \
	busybox-static cpio packer patchelf binutils openssh-client
IMAGE_OUT  ?= out
BASE_ISO   ?=
BASE_URL   ?=
VENDOR_PUBKEY ?=
ACCEL      ?= kvm
AWS_REGION ?= eu-south-1
AWS_S3_BUCKET ?=

.PHONY: image-apt rpm kickstart iso raw ami packer-validate test-image

image-apt:
	@$(call apt_install,$(APT_IMAGE))

rpm: setup image-apt ## agent RPM (PyInstaller + staticx binary) and the appliance repository
	VENDOR_PUBKEY="$(VENDOR_PUBKEY)" $(PY) -m image.rpm --out $(IMAGE_OUT)

kickstart: setup ## render the kickstart variants (iso, disk, aws) into $(IMAGE_OUT)/kickstart
	$(PY) -m image.kickstart --out $(IMAGE_OUT)/kickstart

iso: rpm ## installer ISO from an AlmaLinux 8 ISO: make iso BASE_ISO=AlmaLinux-8.10-x86_64-dvd.iso
	BASE_ISO="$(BASE_ISO)" BASE_URL="$(BASE_URL)" $(PY) -m image.iso --out $(IMAGE_OUT) --rpm $(IMAGE_OUT)/rpm.json

packer-validate: setup image-apt ## packer validate the templates (offline)
	$(PY) -m image.packer validate

raw: setup image-apt ## raw + qcow2 disk images from the ISO (Packer qemu; ACCEL=kvm|tcg)
	$(PY) -m image.packer raw --out $(IMAGE_OUT) --iso $(IMAGE_OUT)/iso.json --accelerator $(ACCEL)

ami: setup image-apt ## AMI: install ks-aws.cfg to raw, import + register (AWS_S3_BUCKET=…)
	AWS_REGION=$(AWS_REGION) VOXNODE_S3_BUCKET=$(AWS_S3_BUCKET) \
		$(PY) -m image.packer ami --out $(IMAGE_OUT) --iso $(IMAGE_OUT)/iso.json --accelerator $(ACCEL)

test-image: setup image-apt ## image tests: kickstarts, RPM, ISO remaster booted in QEMU, packer
	$(PY) -m pytest -q tests/image
