#!/usr/bin/env bash
# Verify a submission of manifests: what CI runs on a pull request, and what a contributor can
# run before opening one. `harness verify` does the work (harness/project/ci.py):
#   1. every manifest validates (schema, pinning, files inside the project);
#   2. every lockfile is pinned, hashed and made from its image's current requirements.in;
#   3. each manifest the change touches (directly, through its image recipe or lockfile, or all
#      of them when harness/, scripts/ or pyproject.toml changed) completes a --smoke run in the
#      sandbox; GPU manifests are skipped on hosts without a GPU, and said so.
# In GitHub Actions each problem is an annotation on its file and line, and the runs are a table
# in the job summary.
# Usage: scripts/verify-submission.sh [BASE_REF]   (default: origin/main; "all" runs every manifest)
set -euo pipefail
cd "$(dirname "$0")/.."
exec harness verify "${1:-origin/main}"
