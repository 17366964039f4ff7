#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run harness and its tests, idempotent:
#   apt packages (Docker engine, mmdebstrap, podman for reproducible image builds; Slurm and munge
#   with --with-slurm; rootless Podman as a runtime, an image registry and the unprivileged Podman
#   user with --with-podman), the engine
#   started without its default bridge, the harness installed, the base image bootstrapped.
# Needs root for apt and dockerd. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_slurm=0
with_podman=0
with_tests=0
for arg in "$@"; do
  case "$arg" in
    --with-slurm) with_slurm=1 ;;
    --with-podman) with_podman=1 ;;
    --with-tests) with_tests=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --with-tests, --with-slurm, --with-podman)" >&2; exit 2 ;;
  esac
done
log() { echo "setup: $*" >&2; }

# The harness (pip) installs while apt installs and the engine starts: it needs neither, and it
# takes a minute or more on a fresh machine. Its test extras (torch, transformers, Ray, pytest: a
# few GB and several more minutes) only with --with-tests: a run needs none of them on the host,
# its workload's packages are in its image.
install_harness() {
  extras="" probe="harness"
  if [ "$with_tests" = 1 ]; then
    extras="[test]" probe="harness, pytest, torch, gymnasium, ruff, mypy, securesystemslib, ray"
  fi
  # install when missing, or when the installed harness is another checkout's
  installed=$(cd / && python3 -c "import $probe, os; print(os.path.dirname(os.path.dirname(harness.__file__)))" 2>/dev/null || true)
  # the distribution was called "harness" before it became harness-repro: drop that editable install
  if python3 -m pip show harness 2>/dev/null | grep -q "^Editable project location: $(pwd -P)\$"; then
    python3 -m pip uninstall -q -y harness
    installed=""
  fi
  if [ "$installed" != "$(pwd -P)" ] || ! command -v harness >/dev/null; then
    log "pip install -e .$extras"
    pip_args=()
    if [ "$with_tests" = 1 ]; then
      # the test extras pin torch; PyTorch's CPU index serves it without CUDA (PyPI's is the CUDA
      # build, GBs), asked only where it answers, since pip retries an unreachable index for every package
      if python3 -c 'import urllib.request; urllib.request.urlopen("https://download.pytorch.org/whl/cpu/", timeout=10)' 2>/dev/null; then
        pip_args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
      fi
    fi
    # Debian 12 and Ubuntu 24.04 mark their python3 externally managed (PEP 668); the README's
    # commands use that python3, so the harness goes into it
    if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
      pip_args+=(--break-system-packages)
    fi
    python3 -m pip install -q "${pip_args[@]}" -e ".$extras"
  fi
}
install_harness &
harness_install=$!

packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
# the builder whose images rebuild to the same id (harness/images/reproducible.py); without it,
# images are built by Docker's builder
command -v podman >/dev/null || packages+=(podman)
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

# every wait is bounded: a hung engine or step ends the setup with a line, not a CI job that never ends
engine_answers() { timeout 60 docker info >/dev/null 2>&1; }
if ! engine_answers; then
  # the default engine's pid file (other engines, with their own sockets, may run beside it)
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    log "dockerd ($pid) runs but does not answer on /var/run/docker.sock; see /var/log/dockerd.log"; exit 1
  fi
  log "starting dockerd (no default bridge, no iptables)"
  # never the default bridge: runs use network none, builds use host networking. A pid file or
  # socket left by an engine that died is replaced by dockerd itself.
  nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/dockerd.log 2>&1 </dev/null &
  engine=$!
  deadline=$((SECONDS + 180))
  until engine_answers; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$engine" 2>/dev/null; then
      log "dockerd did not start; see /var/log/dockerd.log"; tail -5 /var/log/dockerd.log >&2; exit 1
    fi
    sleep 1
  done
fi

wait "$harness_install" || { log "pip install of the harness failed (its output is above)"; exit 1; }
timeout 1800 harness image bootstrap </dev/null
if [ "$with_slurm" = 1 ]; then
  bash scripts/start-slurm.sh
fi
log "ready: $(timeout 300 harness doctor </dev/null | tr '\n' ';')"
