#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment with efficonv, its
# test and experiment dependencies, and the Fashion-MNIST data.
#
#   bash experiments/setup.sh            # then: .venv/bin/python -m experiments.claims.compare
#
# Data: the Debian package `dataset-fashion-mnist` (files in
# /usr/share/datasets/fashion-mnist) where apt is available and we are root;
# otherwise experiments/data/download.py downloads and SHA-256-verifies it on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >&2 \
      || echo "setup: apt could not install dataset-fashion-mnist; the loader will download it" >&2
  else
    echo "setup: no apt/root; Fashion-MNIST will be downloaded (SHA-256 verified) on first use" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,experiments]"
echo "setup: done (.venv)" >&2
