#!/usr/bin/env bash
# Minimal provisioning of the lab `server`, used until playbooks/site.yml and slot.yml exist
# (SLOTWARDEN_PROVISION=shell). Runs as root inside the VM; re-running changes nothing.
#
# Env: SLOT_DEVICE (the spare disk for the slot filesystem), SLOTWARDEN_WHEEL (path in the VM,
# may be empty), SLOTWARDEN_SLOTS (comma-separated names), SLOT_QUOTA_MIB (default 16).
set -euo pipefail
dev=${SLOT_DEVICE:-/dev/vdb}
mnt=/srv/slots
quota_mib=${SLOT_QUOTA_MIB:-16}

# The slot filesystem: ext4 with classic user quotas (the `usrquota` backend).
if ! blkid "$dev" >/dev/null 2>&1; then
  mkfs.ext4 -q -L slots -O quota -E quotatype=usrquota "$dev"
fi
mkdir -p "$mnt"
grep -q "^LABEL=slots " /etc/fstab || echo "LABEL=slots $mnt ext4 defaults,usrquota 0 2" >> /etc/fstab
mountpoint -q "$mnt" || mount "$mnt"
quotaon -p "$mnt" >/dev/null 2>&1 || quotaon -u "$mnt" 2>/dev/null || true

# Tenants see only their own processes; the adm group (operators) sees all.
grep -q '^proc /proc ' /etc/fstab || echo "proc /proc proc defaults,hidepid=invisible,gid=adm 0 0" >> /etc/fstab
mount -o remount,hidepid=invisible,gid=adm /proc

if [[ -n ${SLOTWARDEN_WHEEL:-} ]]; then
  [[ -x /opt/slotwarden/bin/python ]] || python3 -m venv --system-site-packages /opt/slotwarden
  /opt/slotwarden/bin/pip install --quiet --no-index --no-deps --force-reinstall "$SLOTWARDEN_WHEEL"
  ln -sf /opt/slotwarden/bin/slotctl /usr/local/bin/slotctl
fi

IFS=, read -r -a slots <<< "${SLOTWARDEN_SLOTS:-}"
for s in "${slots[@]}"; do
  [[ -n $s ]] || continue
  if ! getent passwd "$s" >/dev/null; then
    useradd -m -d "$mnt/$s" -s /bin/bash -K UMASK=077 "$s"
  fi
  chmod 0700 "$mnt/$s"
  setquota -u "$s" $((quota_mib * 1024)) $((quota_mib * 1024)) 0 0 "$mnt"
done
echo "provisioned: slot fs $mnt ($(findmnt -no OPTIONS "$mnt")), slots: ${SLOTWARDEN_SLOTS:-none}"
