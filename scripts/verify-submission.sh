#!/usr/bin/env bash
# Verify a submission of manifests (what CI runs on a pull request, and what a contributor can
# run before opening one):
#   1. every manifest validates (schema, pinning, files inside the project);
#   2. every lockfile is pinned, hashed and made from its image's current requirements.in;
#   3. each manifest the change touches (directly, or through its image recipe or lockfile) runs
#      with its smoke params in the sandbox and completes; GPU manifests are skipped on hosts
#      without a GPU, and said so.
# Usage: scripts/verify-submission.sh [BASE_REF]   (default: origin/main; "all" runs every manifest)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-origin/main}

harness validate manifests/*.yaml
harness lock --check

if [ "$base" = all ]; then
  changed=$(ls manifests/*.yaml images/*/* lockfiles/*.txt 2>/dev/null)
else
  changed=$(git diff --name-only "$base"...HEAD -- manifests images lockfiles)
fi
# manifests to run: those changed, and those whose image recipe or lockfile changed
to_run=$(python3 - "$changed" <<'PY'
import sys
from pathlib import Path
from harness.manifest import parse_manifest
changed = [line for line in sys.argv[1].split() if line]
chosen = []
for path in sorted(Path("manifests").glob("*.yaml")):
    manifest = parse_manifest(path)
    inputs = {str(path), manifest.image.lockfile or ""}
    touched = any(c in inputs or (manifest.image.build and c.startswith(manifest.image.build.rstrip("/") + "/")) for c in changed)
    if touched:
        chosen.append(f"{path}:{manifest.hardware.gpus}")
print(" ".join(chosen))
PY
)
if [ -z "$to_run" ]; then
  echo "verify: no manifest touched by this change needs a run"
  exit 0
fi
gpus=$(python3 -c "from harness.capture.gpu import host_gpu_status as s; print(len(s().get('devices', [])))")
failed=0
for entry in $to_run; do
  manifest=${entry%%:*}
  wanted=${entry##*:}
  if [ "$wanted" -gt "$gpus" ]; then
    echo "verify: SKIP $manifest (asks for $wanted GPU(s); this host has $gpus)"
    continue
  fi
  echo "verify: smoke run of $manifest"
  if ! harness run "$manifest" --smoke --quiet; then
    failed=1
    echo "verify: FAILED $manifest" >&2
  fi
done
exit $failed
