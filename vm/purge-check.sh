#!/bin/bash
# After the suite: remove the slots, `apt-get purge slotwarden`, and compare the
# host with the footprint taken before site.yml ran (vm/footprint.sh): no package, PAM line,
# unit, user, group or file of ours may be left. Runs in the lab namespace (vm/lab.sh).
#   purge-check.sh VM SLOT1,SLOT2 LOGDIR
set -euo pipefail
vm=${1:?} slots=${2:-} logs=${3:?}
here=$(cd "$(dirname "$0")" && pwd)
on_vm() { timeout -k 10 300 vagrant ssh "$vm" --no-tty -c "$1" -- -o LogLevel=ERROR; }

IFS=, read -r -a names <<< "$slots"
for s in "${names[@]}"; do
  [[ -n $s ]] && on_vm "sudo slotctl --json slot remove $(printf %q "$s") >/dev/null"
done
# Nothing on stdin (vagrant ssh -c does not promise to pass it): the footprint script travels
# in the command line, base64-encoded.
footprint=$(base64 -w0 "$here/footprint.sh")
on_vm "sudo dpkg -L slotwarden | sudo tee /var/tmp/package-files.txt >/dev/null"
# The fleet store's password file is site.yml's (the operator's), not the package's: removed
# as an operator retiring the host would, so the package's purge can take /etc/slotwarden.
on_vm "sudo rm -f /etc/slotwarden/store.password"
on_vm "sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y -q slotwarden" > "$logs/purge.txt" 2>&1
on_vm "echo $footprint | base64 -d > /var/tmp/footprint.sh; sudo bash /var/tmp/footprint.sh /var/tmp/footprint-after.txt"
on_vm "sudo cat /var/tmp/footprint-before.txt" > "$logs/footprint-before.txt"
on_vm "sudo cat /var/tmp/footprint-after.txt" > "$logs/footprint-after.txt"
on_vm "cat /var/tmp/package-files.txt" > "$logs/package-files.txt"
# Every file the package had is gone (its directories may be shared, e.g. /lib/systemd/system).
on_vm "sudo sh -c 'while read -r f; do [ -d \"\$f\" ] || [ ! -e \"\$f\" ] || echo \"left: \$f\"; done' \
  < /var/tmp/package-files.txt" > "$logs/package-files-left.txt"
rc=0
if ! diff -u "$logs/footprint-before.txt" "$logs/footprint-after.txt" > "$logs/footprint.diff"; then
  echo "purge check: the host differs from before site.yml:" >&2; cat "$logs/footprint.diff" >&2; rc=1
fi
if [[ -s $logs/package-files-left.txt ]]; then
  echo "purge check: files of the package left behind:" >&2; cat "$logs/package-files-left.txt" >&2; rc=1
fi
[[ $rc != 0 ]] || echo "purge check: apt purge left the host as it was before site.yml" \
  "($(grep -c . "$logs/package-files.txt") package paths gone; footprint identical)" >&2
exit "$rc"
