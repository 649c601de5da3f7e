#!/bin/bash
# What slotwarden could leave on a host, as sorted text: installed packages, the PAM stack,
# systemd units, users and groups, files and directories named after it. Written to $1.
# vm/purge-check.sh diffs the one taken before site.yml with the one after `apt purge`.
# /etc/ssh/sshd_config.d/50-slotwarden.conf is site.yml's own drop-in, not the package's.
set -euo pipefail
out=${1:?usage: footprint.sh FILE}
# systemctl's D-Bus calls time out (25 s) on a guest emulated under a loaded machine ("Failed to
# list unit files: Connection timed out"): ask again, and print only a complete answer.
sc() {
  local i text
  for i in 1 2 3 4 5 6; do
    if text=$(systemctl "$@"); then printf '%s\n' "$text"; return 0; fi
    sleep 5
  done
  return 1
}
{
  echo "## packages"; dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' | sort
  echo "## /etc/pam.d"; (cd /etc/pam.d && sha256sum -- * | sort -k2)
  # A reload first: a mount unit the fstab generator makes for a line written before (the lab's
  # slot disk) must be in both footprints; login session scopes come and go.
  sc daemon-reload >/dev/null
  echo "## unit files"; sc list-unit-files --no-legend --no-pager | awk '{print $1, $2}' \
    | grep -v -E '^session-[0-9]+\.scope ' | sort
  echo "## units loaded, ours"; sc list-units --all --no-legend --no-pager --plain | awk '{print $1}' \
    | grep -i slotwarden | sort || true
  echo "## users"; getent passwd | cut -d: -f1,3,6,7 | sort
  echo "## groups"; getent group | cut -d: -f1,3,4 | sort
  echo "## named slotwarden"
  find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -iname '*slotwarden*' -print \
    | { grep -v -x -e /etc/ssh/sshd_config.d/50-slotwarden.conf || true; } | sort
  echo "## /run/slotwarden /var/lib/slotwarden /etc/slotwarden /var/cache/slotwarden /usr/lib/slotwarden"
  ls -d /run/slotwarden /var/lib/slotwarden /etc/slotwarden /var/cache/slotwarden /usr/lib/slotwarden 2>/dev/null || true
} > "$out"
