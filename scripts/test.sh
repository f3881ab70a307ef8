#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first): lint, then every test against real mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true

ruff check pfs csi tests scripts benchmarks testservers
ruff format --check pfs csi tests scripts benchmarks testservers
python3 -m mypy  # the files and settings are in pyproject.toml

# Installation: the package alone (no test extras) in a clean venv, every command run once.
bash scripts/check_install.sh

# HDFS: a real single-node cluster for this run when the test kit is there, stopped on exit (also on failure).
source scripts/hdfs.sh
python3 -m pytest -q -ra --durations=25 "$@"
