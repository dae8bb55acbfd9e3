#!/usr/bin/env bash
# Installs missing Debian packages, then configures (once) and builds mcompress in build/
# (Release, Ninja, ccache). Fast the second time: apt is skipped and ninja rebuilds only what changed.
# Environment: BUILD_DIR (default build), MCOMPRESS_CMAKE_ARGS (extra configure flags).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh

BUILD_DIR=${BUILD_DIR:-build}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/mcompress-ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
# Paths relative to the checkout in the cache key: a fresh clone elsewhere (CI) or a git worktree hits
# the cache a previous build filled.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(pwd)}
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  # shellcheck disable=SC2086
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MCOMPRESS_CMAKE_ARGS:-} >/dev/null
fi
start=$(date +%s)
# grep may print nothing (exit 1): only ninja's status counts (pipefail), and a failed build stops here.
status=0
ninja -C "$BUILD_DIR" | { grep -vE '^\[[0-9]+/[0-9]+\] (Building|Linking)' || true; } || status=$?
if [[ $status -ne 0 ]]; then
  echo "[build] FAILED: ninja exited with status $status" >&2
  exit "$status"
fi
echo "[build] $BUILD_DIR up to date ($(( $(date +%s) - start )) s)"
