# slotwarden — the two set-up commands on a fresh Debian 12 machine are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
SLOTCTL := $(VENV)/bin/slotctl
# Debian packages the project uses at run time and in its tests.
APT_PACKAGES := btrfs-progs openssh-server openssh-client libpam0g-dev gcc make supervisor quota \
	python3 python3-venv python3-dev sshpass iproute2 procps psmisc acl sudo util-linux \
	transmission-daemon wordpress php-fpm php-mysql php-cli nginx-light mariadb-server mariadb-client systemd nftables \
	chromium cron at prometheus postgresql
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -y -qq
DEMO_IMAGE ?= /var/lib/slotwarden/slots.img
DEMO_SIZE ?= 4G
DEMO_SLOT ?= demo

# The apps' shared read-only installs (JupyterLab from PyPI), one venv per app.
APPS_SHARED ?= /opt/slotwarden/apps

.PHONY: deps venv apps-shared demo test test-unit test-system lint bench clean pam vm-deps vm-box vm-test deb deb-deps deb-lint deb-test

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; $(APT) update && $(APT) install $$missing; fi

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: deps $(VENV)/.stamp

apps-shared: deps $(APPS_SHARED)/jupyterlab/.stamp

$(APPS_SHARED)/jupyterlab/.stamp:
	test -x $(APPS_SHARED)/jupyterlab/bin/python || /usr/bin/python3 -m venv $(APPS_SHARED)/jupyterlab
	$(APPS_SHARED)/jupyterlab/bin/pip install -q 'jupyterlab>=4,<5'
	chmod -R go-w $(APPS_SHARED)
	touch $@

demo: venv
	ln -sf $(SLOTCTL) /usr/local/sbin/slotctl
	$(SLOTCTL) host init --loopback-image $(DEMO_IMAGE) --loopback-size $(DEMO_SIZE)
	$(SLOTCTL) guard supervise
	@if $(SLOTCTL) slot show $(DEMO_SLOT) >/dev/null 2>&1; then \
	  echo "slot $(DEMO_SLOT) exists already; 'slotctl slot passwd $(DEMO_SLOT)' gives it a new password"; \
	else \
	  $(SLOTCTL) slot create $(DEMO_SLOT) --email demo@example.com --country DE --quota 1G; \
	fi
	$(SLOTCTL) slot show $(DEMO_SLOT)
	@echo; echo "Log in as the tenant: 'su - $(DEMO_SLOT)' here, or 'ssh $(DEMO_SLOT)@<this host>' with the password above."
	@echo "Remove it: 'slotctl slot remove $(DEMO_SLOT)'."

# The guard's PAM module, built against libpam0g-dev (slotctl guard install copies it into place).
pam: deps
	$(MAKE) -C pam_hooks/c

# deb: tests/system/test_deb_package.py installs, reinstalls and purges it in a Debian 12 chroot.
# Doctests: every >>> example in provisioner/, pam_hooks/ and the lab package (tests/system/fixtures/).
test: venv apps-shared pam deb
	$(VENV)/bin/pytest -q --doctest-modules provisioner pam_hooks tests/unit
	$(VENV)/bin/pytest -q --doctest-modules tests/system

test-unit: venv
	$(VENV)/bin/pytest -q --doctest-modules provisioner pam_hooks tests/unit

lint: venv
	$(VENV)/bin/ruff check provisioner pam_hooks tests bench
	$(VENV)/bin/mypy provisioner pam_hooks

bench: venv
	$(PY) bench/provision.py
	$(PY) bench/metrics.py
	$(PY) bench/api.py
	$(PY) bench/fleet.py
	$(PY) bench/hub.py

# The VM lab (Vagrant + libvirt, software-emulated QEMU) and the Debian 12 box it boots, built
# offline from Debian's archive. See "Testing in VMs" in the README.
VM_APT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils mmdebstrap \
	extlinux syslinux-common e2fsprogs fdisk dnsmasq-base openssl sshpass coreutils

vm-deps:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(VM_APT_PACKAGES)"

vm-box: vm-deps
	vm/build-box.sh

vm-test: venv vm-deps
	vm/lab.sh test

# The .deb (debian/, see "Production install (.deb)" in the README): built from a copy of this
# checkout's files (tracked and untracked, .gitignore respected) so dpkg-buildpackage's output
# lands in build/deb/ and never beside the checkout.
DEB_APT_PACKAGES := debhelper dh-virtualenv dpkg-dev fakeroot lintian libpam0g-dev gcc make python3-venv \
	python3-click python3-rich python3-psutil python3-pyroute2 python3-cryptography python3-jinja2 \
	python3-pampy python3-pyotp python3-qrcode python3-psycopg mmdebstrap
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_FILE = build/deb/slotwarden_$(DEB_VERSION)_$(shell dpkg --print-architecture).deb

deb-deps:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(DEB_APT_PACKAGES)"

deb: deb-deps
	@test "$(DEB_VERSION)" = "$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" || \
	  { echo "debian/changelog ($(DEB_VERSION)) and pyproject.toml disagree on the version" >&2; exit 2; }
	@# Built in a directory of its own and moved into place: two builds at once (make test and
	@# the VM lab, which .ci/run runs side by side) never see each other's half-made files, and a
	@# reader of build/deb/ finds the old package or the new one, whole.
	@mkdir -p build/deb && work=$$(mktemp -d build/deb/work.XXXXXX) && mkdir $$work/src && \
	  git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t $$work/src && \
	  if (cd $$work/src && dpkg-buildpackage -b -us -uc --no-sign -rfakeroot >../build.log 2>&1); then \
	    mv -f $$work/build.log build/deb/build.log && mv -f $$work/slotwarden_*.deb build/deb/ && rm -rf $$work && \
	    find build/deb -maxdepth 1 -name 'slotwarden_*' ! -name '$(notdir $(DEB_FILE))' -delete; \
	  else tail -40 $$work/build.log; rm -rf $$work; exit 1; fi
	@echo "built $(DEB_FILE)"

# lintian: clean but for the tags debian/slotwarden.lintian-overrides explains.
deb-lint: deb
	lintian --fail-on error,warning --info $(DEB_FILE)

# Install, reinstall (the upgrade path), purge in a throw-away Debian 12 chroot; diff before/after
# (also part of `make test`).
deb-test: venv deb
	$(VENV)/bin/pytest -q tests/system/test_deb_package.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
	$(MAKE) -C pam_hooks/c clean
