#!/usr/bin/env bash
# The VM lab: two Vagrant VMs inside a network namespace of their own, the isolation suite
# against them, and everything torn down again — also when a step fails or hangs.
#
#   vm/lab.sh test     # make vm-test: namespace, daemons, box, up, provision, suite, destroy
#
# Layout of one run:
#   root namespace:  a prohibit route for 198.51.100.0/24 (so nothing here can route lab
#                    addresses out through the machine's gateway), the box and package builds
#   netns swv-lab-*: virtlogd + libvirtd (started here, stopped by PID), the libvirt networks,
#                    dnsmasq, QEMU, vagrant and pytest. libvirt's `default` network never starts.
# Every step that can hang runs under `timeout -k`. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${SLOTWARDEN_VM_CACHE:-/var/cache/slotwarden-vm}
# The whole lab lives in TEST-NET-2: private network 198.51.100.0/25, management network
# 198.51.100.128/25. TEST-NET-3 (203.0.113.0/24) is left alone: on this kind of machine the
# package mirrors resolve into it, and a prohibit route there would cut every job off PyPI/Debian.
lab_range=198.51.100.0/24

log() { printf '[vm-lab %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Vagrant redraws progress bars with carriage returns; keep the log readable.
quiet() { stdbuf -o0 tr '\r' '\n' | sed -u 's/\x1b\[K//g' | grep --line-buffered -v -e '^Progress:' -e '^[[:space:]]*$' || true; }

# ---------------------------------------------------------------- root namespace side
outer() {
  [[ $(id -u) == 0 ]] || die "needs root"
  mkdir -p "$cache"
  # One lab per machine: libvirtd's sockets and state directories are machine-wide.
  exec 9>"$cache/lab.lock"
  flock -w 1800 9 || die "another VM lab holds $cache/lab.lock"

  started=$SECONDS
  box=$(timeout -k 20 1800 "$here/build-box.sh" | tail -n1) || die "box build failed"
  run_id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
  ns=swv-lab-$run_id
  work=$(mktemp -d /tmp/swv-lab.XXXXXX)
  added_route=""

  # Runs after outer() returned: only globals here.
  cleanup_outer() {
    local rc=$?
    # Processes left in the namespace were all started by this run; end them by PID.
    if ip netns list | grep -qw "$ns"; then
      local pids
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [[ -n $pids ]]; then
        log "ending leftover processes in $ns: $(echo $pids)"
        kill -TERM $pids 2>/dev/null || true
        sleep 2
        kill -KILL $(ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
      fi
      ip netns del "$ns" || true
    fi
    [[ -z $added_route ]] || ip route del prohibit "$lab_range" 2>/dev/null || true
    if [[ $rc != 0 && -d $work/logs ]]; then
      mkdir -p "$cache/last-failure" && cp -a "$work/logs/." "$cache/last-failure/" 2>/dev/null || true
      log "serial console logs of the failed run: $cache/last-failure/"
    fi
    rm -rf "$work"
    log "lab finished in $((SECONDS - started)) s (rc=$rc)"
  }
  trap cleanup_outer EXIT

  # Someone else's lab may hold the same route; only ours is removed again.
  if ! ip route show type prohibit | grep -q "^prohibit $lab_range"; then
    ip route add prohibit "$lab_range"
    added_route=yes
  fi
  ip netns add "$ns"
  ip -n "$ns" link set lo up

  # site.yml installs the package built from this checkout (make deb); inside the namespace
  # there is no index to fetch the bundled web stack (or the build backend) from.
  log "building the package from $top (make deb)"
  timeout -k 20 900 make -C "$top" --no-print-directory deb >&2 || die "make deb failed"
  local deb
  deb=$(ls "$top"/build/deb/slotwarden_*.deb) || die "make deb left no package"

  SLOTWARDEN_LAB_NS=$ns SLOTWARDEN_LAB_WORK=$work SLOTWARDEN_LAB_RUN=$run_id \
  SLOTWARDEN_LAB_BOX=$box SLOTWARDEN_DEB=$deb \
    ip netns exec "$ns" "$here/lab.sh" inner "$@"
}

# ---------------------------------------------------------------- lab namespace side
inner() {
  # Globals, not locals: the EXIT trap runs after inner() has returned.
  ns=${SLOTWARDEN_LAB_NS:?} work=${SLOTWARDEN_LAB_WORK:?} run_id=${SLOTWARDEN_LAB_RUN:?}
  box=${SLOTWARDEN_LAB_BOX:?}
  # A vagrant or libvirt call from the root namespace would route lab addresses out through
  # the machine's own gateway; refuse anywhere but the lab namespace.
  [[ $(ip netns identify $$) == "$ns" ]] || die "not inside the lab namespace $ns"

  run=$work/run
  mkdir -p "$run" "$work/logs" "$cache/pool" "$cache/vagrant.d"
  export VAGRANT_HOME=$cache/vagrant.d
  export VAGRANT_DOTFILE_PATH=$work/dotvagrant
  export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS_UPDATE=1
  export LIBVIRT_DEFAULT_URI=qemu:///system
  export SLOTWARDEN_BOX=slotwarden/debian12-$(basename "$box" .box | sed 's/^debian12-//')
  export SLOTWARDEN_VM_DRIVER=qemu SLOTWARDEN_VM_POOL=swv-pool SLOTWARDEN_VM_PREFIX=swv-$run_id-
  export SLOTWARDEN_VM_LOGDIR=$work/logs SLOTWARDEN_VM_INSERT_KEY=0
  export SLOTWARDEN_SLOTS=tv${run_id}a,tv${run_id}b SLOTWARDEN_SLOT_QUOTA_MIB=16
  # Vagrant's ansible provisioner runs ansible-playbook from the project's venv; site.yml
  # copies the package built above (nothing is fetched from an index in here).
  # Pipelining: one SSH exec per module instead of put + chmod + exec (Python in an emulated
  # guest is the slow part, and every saved round trip counts).
  export PATH=$top/.venv/bin:$PATH PIP_NO_INDEX=1 ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_PIPELINING=True
  export VAGRANT_CWD=$top

  if [[ -e /run/libvirt/libvirtd.pid ]] && kill -0 "$(cat /run/libvirt/libvirtd.pid)" 2>/dev/null; then
    die "a libvirtd is already running (pid $(cat /run/libvirt/libvirtd.pid)); the lab needs its own"
  fi
  # libvirt's stock `default` network (192.168.122.0/24, NAT) must never start in the lab.
  rm -f /etc/libvirt/qemu/networks/autostart/default.xml

  stop_daemons() {
    local rc=$?
    set +e
    if [[ -S /run/libvirt/libvirt-sock ]] && [[ -s $run/libvirtd.pid ]]; then
      log "destroying lab domains, networks and pool"
      local d
      for d in $(timeout -k 20 30 virsh list --all --name | grep "^swv-$run_id-"); do
        timeout -k 20 60 virsh destroy "$d" >/dev/null 2>&1
        timeout -k 20 60 virsh undefine "$d" --remove-all-storage --nvram >/dev/null 2>&1 \
          || timeout -k 20 60 virsh undefine "$d" --remove-all-storage >/dev/null 2>&1
      done
      for d in swv-private swv-mgmt; do
        timeout -k 20 30 virsh net-destroy "$d" >/dev/null 2>&1
        timeout -k 20 30 virsh net-undefine "$d" >/dev/null 2>&1
      done
      timeout -k 20 30 virsh pool-destroy swv-pool >/dev/null 2>&1
    fi
    local f p
    for f in libvirtd virtlogd; do
      [[ -s $run/$f.pid ]] || continue
      p=$(cat "$run/$f.pid")
      kill -TERM "$p" 2>/dev/null || continue
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$p" 2>/dev/null && log "$f (pid $p) did not stop on TERM; killed"
    done
    exit "$rc"
  }
  trap stop_daemons EXIT

  # libvirt re-probes QEMU (seconds each) on every call when /dev/kvm exists but its QEMU user
  # cannot open it, as here (root-only /dev/kvm, no udev). This mount namespace alone gets a
  # node the kvm group may open, as udev sets it up on a stock Debian host.
  if [[ -c /dev/kvm ]]; then
    mknod -m 0660 "$run/kvm" c $((16#$(stat -c %t /dev/kvm))) $((16#$(stat -c %T /dev/kvm)))
    chgrp kvm "$run/kvm"
    mount --bind "$run/kvm" /dev/kvm
  fi

  log "starting virtlogd and libvirtd in $ns"
  timeout -k 20 30 virtlogd -d -p "$run/virtlogd.pid"
  timeout -k 20 30 libvirtd -d -p "$run/libvirtd.pid"
  timeout -k 20 60 bash -c 'until virsh -q version >/dev/null 2>&1; do sleep 0.5; done' \
    || die "libvirtd did not answer within 60 s"

  # What a run that died before its cleanup left in libvirt's state (libvirtd brings running
  # transient pools back from /run): the lab's pool and networks start fresh every time.
  timeout -k 20 30 virsh pool-destroy swv-pool >/dev/null 2>&1 || true
  local net
  for net in swv-private swv-mgmt; do
    timeout -k 20 30 virsh net-destroy "$net" >/dev/null 2>&1 || true
    timeout -k 20 30 virsh net-undefine "$net" >/dev/null 2>&1 || true
  done
  # A pool of our own, transient: box volumes stay cached in $cache/pool between runs.
  timeout -k 20 60 virsh -q pool-create-as swv-pool dir --target "$cache/pool" >/dev/null
  # Disks of domains from an earlier run that died before its cleanup.
  find "$cache/pool" -maxdepth 1 -name 'swv-*' -delete
  timeout -k 20 60 virsh -q pool-refresh swv-pool >/dev/null

  if ! vagrant box list 2>/dev/null | grep -q "^$SLOTWARDEN_BOX "; then
    log "vagrant box add $SLOTWARDEN_BOX"
    # Older lab boxes (and their uploaded volumes) are dead weight once the inputs changed.
    local old
    for old in $(vagrant box list 2>/dev/null | awk '/^slotwarden\/debian12-/ {print $1}'); do
      vagrant box remove --force --all "$old" >/dev/null 2>&1 || true
    done
    find "$cache/pool" -maxdepth 1 -name 'slotwarden-VAGRANTSLASH-debian12-*' -delete
    timeout -k 20 300 vagrant box add --name "$SLOTWARDEN_BOX" "$box" 2>&1 | quiet >&2
  fi

  # The fleet store's password (the client's PostgreSQL, the server's [store] and [guard]
  # store): a root-only file here, read by the playbooks (no_log), gone with $work.
  export SLOTWARDEN_STORE_PASSWORD_FILE=$work/fleet-store.password
  (umask 077; head -c 24 /dev/urandom | base64 | tr '+/' '-_' > "$SLOTWARDEN_STORE_PASSWORD_FILE")

  local t0=$SECONDS
  log "vagrant up (server, client)"
  timeout -k 20 900 vagrant up --provider=libvirt --no-provision 2>&1 | quiet >&2 \
    || die "vagrant up failed (serial logs: $work/logs)"
  log "vagrant up: $((SECONDS - t0)) s"
  t0=$SECONDS
  # Side by side: the client's PostgreSQL is needed only when site.yml reaches `slotctl db
  # upgrade` (it waits for it), after the slot disk and the package install on the server.
  log "provisioning client (playbooks/postgres.yml: the fleet's PostgreSQL) beside the server"
  local client_rc=0 client_pid
  ( set +e; timeout -k 20 900 vagrant provision client 2>&1 | quiet > "$work/logs/provision-client.txt"
    rc=$?; log "provision client: $((SECONDS - t0)) s (rc=$rc)"; exit "$rc" ) &
  client_pid=$!
  log "provisioning server (vm/slot-disk.sh, playbooks/site.yml, playbooks/slot.yml)"
  timeout -k 20 1500 vagrant provision server 2>&1 | quiet >&2 || { wait "$client_pid"; die "provisioning failed"; }
  wait "$client_pid" || client_rc=$?
  cat "$work/logs/provision-client.txt" >&2
  [[ $client_rc == 0 ]] || die "provisioning client failed"
  log "provision: $((SECONDS - t0)) s"

  timeout -k 20 60 vagrant ssh-config > "$work/ssh-config"
  t0=$SECONDS
  log "isolation suite"
  local rc=0
  timeout -k 20 1500 "$top/.venv/bin/python" -m pytest -p no:cacheprovider "$top/tests/infra" \
    --hosts=ssh://server --ssh-config="$work/ssh-config" --sudo --guard=yes --confine=yes \
    --client-host=ssh://client --server-address=198.51.100.10 --shared-store=ssh://client \
    --slots="$SLOTWARDEN_SLOTS" --quota-mib="$SLOTWARDEN_SLOT_QUOTA_MIB" -ra "$@" || rc=$?
  log "isolation suite: $((SECONDS - t0)) s (rc=$rc)"
  # The shared-store outage check stops the client's PostgreSQL and starts it again; a suite
  # cut short must not leave the server's store down for the next suite.
  timeout -k 20 120 vagrant ssh client --no-tty -c "sudo systemctl start postgresql.service" -- -o LogLevel=ERROR \
    || log "could not make sure PostgreSQL runs on client"

  # The production path (systemd, cgroup v2, usrquota): limits, apps under systemd, metrics,
  # suspend, then a reboot of the server. Last: it reboots the server.
  t0=$SECONDS
  log "production-path suite"
  timeout -k 20 1500 "$top/.venv/bin/python" -m pytest -p no:cacheprovider "$top/tests/production" \
    --hosts=ssh://server --ssh-config="$work/ssh-config" --sudo --server-address=198.51.100.10 \
    --run-id="$run_id" -ra "$@" || rc=$?
  log "production-path suite: $((SECONDS - t0)) s (rc=$rc)"

  # apt purge leaves the host as it was before site.yml (vm/purge-check.sh).
  t0=$SECONDS
  log "purge check"
  timeout -k 20 600 "$here/purge-check.sh" server "$SLOTWARDEN_SLOTS" "$work/logs" >&2 || { [[ $rc != 0 ]] || rc=1; }
  log "purge check: $((SECONDS - t0)) s (rc=$rc)"

  t0=$SECONDS
  timeout -k 20 300 vagrant destroy -f >&2 || log "vagrant destroy failed; falling back to virsh"
  log "vagrant destroy: $((SECONDS - t0)) s"
  return "$rc"
}

case ${1:-} in
  test) shift; outer "$@" ;;
  inner) shift; inner "$@" ;;
  *) echo "usage: $0 test" >&2; exit 2 ;;
esac
