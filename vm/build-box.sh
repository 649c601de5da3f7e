#!/usr/bin/env bash
# Build the Debian 12 Vagrant box (libvirt provider) offline from Debian's archive.
#
# The box is cached by the content hash of its build inputs (this script and the package
# list): a second run with unchanged inputs only prints the cached path. Prints the box path
# on stdout as its last line; everything else goes to stderr.
#
#   vm/build-box.sh            # -> /var/cache/slotwarden-vm/boxes/debian12-<hash>.box
#
# Needs root (mmdebstrap into a directory, a loop mount for extlinux), mmdebstrap,
# e2fsprogs, extlinux, qemu-utils, sfdisk.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SLOTWARDEN_VM_CACHE:-/var/cache/slotwarden-vm}
mirror=${SLOTWARDEN_VM_MIRROR:-http://deb.debian.org/debian}
packages_file=$here/box-packages.txt

hash=$(cat "$here/build-box.sh" "$packages_file" | sha256sum | cut -c1-16)
box=$cache/boxes/debian12-$hash.box
if [[ -s $box ]]; then
  echo "cached box: $box" >&2
  echo "$box"
  exit 0
fi

[[ $(id -u) == 0 ]] || { echo "build-box.sh: needs root" >&2; exit 1; }
mkdir -p "$cache/boxes"
work=$(mktemp -d "$cache/build.XXXXXX")
mnt=""
cleanup() {
  # Always undo the loop mount and drop the scratch tree, also when a step failed.
  if [[ -n $mnt ]] && mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
  rm -rf "$work"
}
trap cleanup EXIT

pubkey=$(find /usr/share/rubygems-integration /usr/share/vagrant /opt/vagrant -name vagrant.pub -path '*keys*' 2>/dev/null | head -n1 || true)
[[ -n $pubkey ]] || { echo "build-box.sh: Vagrant's insecure public key not found (is vagrant installed?)" >&2; exit 1; }

packages=$(grep -v '^#' "$packages_file" | xargs | tr ' ' ',')
root=$work/root
echo "mmdebstrap: bookworm from $mirror" >&2
# The customize hooks run in the finished tree: what every Vagrant box needs (the vagrant
# user with the insecure key and passwordless sudo), DHCP on eth0 for the management
# network, and per-VM identity (machine-id, ssh host keys) generated at first boot so two
# VMs from one box never share a DHCP client id or host keys. Only an ed25519 host key and a
# quiet kernel: under software emulation an RSA key and a chatty serial console cost seconds.
# PostgreSQL is in the box for the client VM (the fleet's store) but off on every VM until a
# playbook (playbooks/postgres.yml) turns it on.
timeout 1200 mmdebstrap --variant=minbase --include="$packages" \
  --customize-hook='echo "LABEL=root / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"' \
  --customize-hook='echo debian12 > "$1/etc/hostname"; printf "127.0.0.1 localhost\n127.0.1.1 debian12\n" > "$1/etc/hosts"' \
  --customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo vagrant' \
  --customize-hook='echo vagrant:vagrant | chroot "$1" chpasswd' \
  --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"; chmod 0440 "$1/etc/sudoers.d/vagrant"' \
  --customize-hook="install -d -m 0700 -o 1000 -g 1000 \"\$1/home/vagrant/.ssh\"; install -m 0600 -o 1000 -g 1000 $pubkey \"\$1/home/vagrant/.ssh/authorized_keys\"" \
  --customize-hook='printf "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n" > "$1/etc/systemd/network/10-eth0.network"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
  --customize-hook='printf "UseDNS no\n" > "$1/etc/ssh/sshd_config.d/10-vagrant.conf"' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*; : > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
  --customize-hook='printf "[Unit]\nDescription=Generate ssh host keys\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key\n[Install]\nWantedBy=multi-user.target\n" > "$1/etc/systemd/system/ssh-hostkeys.service"; chroot "$1" systemctl enable ssh-hostkeys.service' \
  --customize-hook='k=$(cd "$1/boot" && ls vmlinuz-* | sort -V | tail -n1); i=initrd.img-${k#vmlinuz-}; mkdir -p "$1/boot/extlinux"; printf "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /boot/%s\n  INITRD /boot/%s\n  APPEND root=LABEL=root ro net.ifnames=0 quiet loglevel=3 console=tty0 console=ttyS0,115200n8\n" "$k" "$i" > "$1/boot/extlinux/extlinux.conf"' \
  --customize-hook='chroot "$1" systemctl disable postgresql.service' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
  bookworm "$root" "$mirror" >&2

size_mib=4096
part=$work/part.img
# 64bit stays off: extlinux reads the filesystem to load the kernel and older syslinux
# cannot follow 64bit ext4 block maps.
echo "mkfs.ext4 -d (${size_mib} MiB root)" >&2
timeout 600 mkfs.ext4 -q -F -L root -O ^64bit -d "$root" "$part" "$((size_mib - 1))M" >&2
mnt=$work/mnt
mkdir -p "$mnt"
timeout 60 mount -o loop "$part" "$mnt"
timeout 60 extlinux --install "$mnt/boot/extlinux" >&2
umount "$mnt"
mnt=""

disk=$work/disk.img
truncate -s "${size_mib}M" "$disk"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q "$disk" >&2
dd if=/usr/lib/EXTLINUX/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$part"

echo "qemu-img convert -> qcow2" >&2
timeout 900 qemu-img convert -c -O qcow2 "$disk" "$work/box.img"
rm -f "$disk"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$((size_mib / 1024))" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'VF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
VF
tar -C "$work" -cf "$box.tmp" metadata.json Vagrantfile box.img
mv "$box.tmp" "$box"
# Older builds of the box are dead weight once the inputs changed.
find "$cache/boxes" -name 'debian12-*.box' ! -name "debian12-$hash.box" -delete
echo "built box: $box ($(du -h "$box" | cut -f1))" >&2
echo "$box"
