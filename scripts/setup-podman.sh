#!/usr/bin/env bash
# Rootless Podman and an image registry for harness (called by `scripts/setup.sh --with-podman`),
# idempotent: the Debian packages (podman, uidmap, slirp4netns, docker-registry, apache2-utils for
# htpasswd), the unprivileged user that runs Podman (HARNESS_PODMAN_USER, default harness-podman)
# and an ordinary user for the tests (HARNESS_PLAIN_USER, default harness-plain), both with
# /etc/subuid and /etc/subgid ranges. No service is started here: the harness starts
# `podman system service` itself when a run needs it, and the tests start their own registries on
# 127.0.0.1 (the package's own registry service, on :5000, is kept from starting).
set -euo pipefail
user=${HARNESS_PODMAN_USER:-harness-podman}
log() { echo "setup-podman: $*" >&2; }

packages=()
command -v podman >/dev/null || packages+=(podman)
command -v newuidmap >/dev/null || packages+=(uidmap)
command -v slirp4netns >/dev/null || packages+=(slirp4netns)
command -v docker-registry >/dev/null || packages+=(docker-registry)
command -v htpasswd >/dev/null || packages+=(apache2-utils)
if [ ${#packages[@]} -gt 0 ]; then
  log "apt-get install ${packages[*]}"
  # keep packages' services from starting on install (docker-registry's would listen on :5000)
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${packages[@]}" >/dev/null
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

# Each user: an account with /etc/subuid and /etc/subgid ranges and overlay storage. The first runs
# Podman for a harness that runs as root; the second is an ordinary user that the tests run the
# harness itself as, without a login session (no XDG_RUNTIME_DIR, no /run/user/<uid>).
podman_user() {
  local user=$1
  if ! id "$user" >/dev/null 2>&1; then
    log "useradd $user (runs rootless Podman)"
    useradd --create-home --shell /usr/sbin/nologin "$user"
  fi
  for file in /etc/subuid /etc/subgid; do
    touch "$file"
    if ! grep -q "^$user:" "$file"; then
      # the next free range of 65536 ids above every range already given
      start=$(awk -F: 'BEGIN {m = 100000} {e = $2 + $3; if (e > m) m = e} END {print m}' "$file")
      echo "$user:$start:65536" >>"$file"
      log "$file: $user:$start:65536"
    fi
  done
  # overlay storage where the kernel allows it in a user namespace: vfs (Podman's fallback) copies a
  # whole image for every container (seconds per run). Only for a user without storage yet: a store
  # made with another driver stays as it is (`podman system reset` as the user switches it).
  local home conf probe pause
  home=$(getent passwd "$user" | cut -d: -f6)
  conf="$home/.config/containers/storage.conf"
  if [ ! -e "$conf" ] && [ ! -d "$home/.local/share/containers/storage" ]; then
    probe=$(mktemp -d /tmp/harness-podman-probe.XXXXXX)
    chown "$user" "$probe"
    if (cd / && runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="$probe/run" podman --root "$probe/root" \
        --runroot "$probe/run" --storage-driver overlay info >/dev/null 2>&1); then
      runuser -u "$user" -- mkdir -p "$home/.config/containers"
      printf '[storage]\ndriver = "overlay"\n' >"$conf"
      chown "$user": "$conf"
      log "$conf: overlay storage"
    fi
    # the probe's pause process and files are the user's, under the probe folder
    pause=$(cat "$probe/run/libpod/tmp/pause.pid" 2>/dev/null || true)
    [ -n "$pause" ] && kill "$pause" 2>/dev/null || true
    rm -rf "$probe" 2>/dev/null || runuser -u "$user" -- rm -rf "$probe" || true
  fi
}
if [ "$user" != root ]; then podman_user "$user"; fi
podman_user "${HARNESS_PLAIN_USER:-harness-plain}"
log "ready: $(podman --version), user $user, $(docker-registry --version 2>/dev/null | awk '{print $NF}')"
