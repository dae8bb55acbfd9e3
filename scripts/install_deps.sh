#!/usr/bin/env bash
# Installs every Debian package mcompress needs to build, test and fuzz. Idempotent: it only calls
# apt when something is missing, so the second run costs a dpkg query.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas-dev
  libeigen3-dev libboost-program-options-dev libhdf5-dev
  catch2 pybind11-dev python3-dev python3-numpy python3-torch python3-h5py python3-pytest
  libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev zlib1g-dev
  libicu-dev  # Unicode categories and NFC for the tokenizers
  clang libclang-rt-14-dev
  chromium  # tests/python/test_report_html.py renders report.html headless
  slurm-wlm munge  # scripts/slurm_local.sh: a single-node Slurm cluster for tests/python/test_slurm_local.py
)
if [[ "${MCOMPRESS_EXTRA_PKGS:-}" != "" ]]; then read -r -a extra <<<"$MCOMPRESS_EXTRA_PKGS"; PKGS+=("${extra[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then missing+=("$p"); fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "[install] missing Debian packages: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[install] done"
