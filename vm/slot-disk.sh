#!/usr/bin/env bash
# The lab server's slot filesystem: the spare disk as ext4, mounted with usrquota at SLOTS_ROOT.
# Runs as root inside the VM (a Vagrant shell provisioner); re-running changes nothing.
set -euo pipefail
dev=${SLOT_DEVICE:-/dev/vdb}
root=${SLOTS_ROOT:-/srv/slots}
blkid "$dev" >/dev/null 2>&1 || mkfs.ext4 -q -L slots "$dev"
mkdir -p "$root"
grep -q "^LABEL=slots " /etc/fstab || echo "LABEL=slots $root ext4 defaults,usrquota,nosuid,nodev 0 2" >> /etc/fstab
mountpoint -q "$root" || mount "$root"
findmnt -no SOURCE,FSTYPE,OPTIONS "$root"
