#!/usr/bin/env bash
# INTERIM, until playbooks/site.yml installs the guard (its `slotwarden_guard` tasks are a stub,
# and the wheel does not carry pam_hooks/c): build pam_slotwarden.so from the sources Vagrant
# uploaded, put the guard into sshd's PAM stack, and keep its service running under supervisord.
# Runs as root inside the lab server; re-running changes nothing.
set -euo pipefail
src=${GUARD_SRC:-/tmp/slotwarden-pam-c}
if grep -qs pam_slotwarden.so /etc/pam.d/common-auth; then
  echo "the guard is in the PAM stack already (site.yml's pam-auth-update profile): nothing to do"
  exit 0
fi
make -s -C "$src" clean install
if ! grep -q pam_slotwarden.so /etc/pam.d/sshd; then
  slotctl guard install --service sshd --no-module
fi
systemctl enable --now supervisor
supervisorctl update >/dev/null
for _ in $(seq 30); do slotctl guard status >/dev/null 2>&1 && break; sleep 1; done
slotctl guard status
