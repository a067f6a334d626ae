#!/usr/bin/env bash
# The Keras and MXNet test environments (noxfile.py sessions "keras" and "mxnet"), each
# built from scratch in .nox/. Usage: ci/frameworks.sh [SESSION ...]   (default: keras mxnet)
# nox comes from .venv when adamlab[dev] has it, else from a small tool venv, .venv-nox.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import nox" 2>/dev/null; then
  nox=(.venv/bin/python -m nox)
else
  [ -x .venv-nox/bin/python ] || "${PYTHON:-python3}" -m venv .venv-nox
  .venv-nox/bin/python -m pip install -q --disable-pip-version-check "nox>=2024.4"
  nox=(.venv-nox/bin/python -m nox)
fi
[ "$#" -gt 0 ] || set -- keras mxnet
"${nox[@]}" --no-reuse-existing-virtualenvs -s "$@"
