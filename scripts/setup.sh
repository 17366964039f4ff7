#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run harness and its tests, idempotent:
#   apt packages (Docker engine, mmdebstrap; Slurm and munge with --with-slurm; rootless Podman,
#   an image registry and the unprivileged Podman user with --with-podman), the engine
#   started without its default bridge, the harness installed, the base image bootstrapped.
# Needs root for apt and dockerd. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_slurm=0
with_podman=0
for arg in "$@"; do
  case "$arg" in
    --with-slurm) with_slurm=1 ;;
    --with-podman) with_podman=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --with-slurm, --with-podman)" >&2; exit 2 ;;
  esac
done
log() { echo "setup: $*" >&2; }

packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
if [ "$with_slurm" = 1 ]; then
  command -v slurmctld >/dev/null || packages+=(slurm-wlm)
  command -v munged >/dev/null || packages+=(munge)
fi
if [ ${#packages[@]} -gt 0 ]; then
  log "apt-get install ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${packages[@]}" >/dev/null
fi

if [ "$with_podman" = 1 ]; then
  bash scripts/setup-podman.sh
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (no default bridge, no iptables)"
  # never the default bridge: runs use network none, builds use host networking
  nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -5 /var/log/dockerd.log >&2; exit 1; }
fi

# install when missing, or when the installed harness is another checkout's
installed=$(cd / && python3 -c "import harness, pytest, torch, gymnasium, ruff, mypy, securesystemslib, os; print(os.path.dirname(os.path.dirname(harness.__file__)))" 2>/dev/null || true)
# the distribution was called "harness" before it became harness-repro: drop that editable install
if python3 -m pip show harness 2>/dev/null | grep -q "^Editable project location: $(pwd -P)\$"; then
  python3 -m pip uninstall -q -y harness
  installed=""
fi
if [ "$installed" != "$(pwd -P)" ] || ! command -v harness >/dev/null; then
  log "pip install -e .[test]"
  pip_args=()
  # the test extras pin torch; its CPU build is on PyTorch's index (PyPI's is the CUDA build, GBs)
  # PyTorch's CPU index serves torch without CUDA (PyPI's is several GB); asked only where it
  # answers, since pip retries an unreachable index for every package
  if python3 -c 'import urllib.request; urllib.request.urlopen("https://download.pytorch.org/whl/cpu/", timeout=10)' 2>/dev/null; then
    pip_args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  # Debian 12 and Ubuntu 24.04 mark their python3 externally managed (PEP 668); the README's
  # commands use that python3, so the harness goes into it
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
    pip_args+=(--break-system-packages)
  fi
  python3 -m pip install -q "${pip_args[@]}" -e '.[test]'
fi

harness image bootstrap
if [ "$with_slurm" = 1 ]; then
  bash scripts/start-slurm.sh
fi
log "ready: $(harness doctor | tr '\n' ';')"
