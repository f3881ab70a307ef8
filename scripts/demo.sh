#!/usr/bin/env bash
# Install everything, then run the demo: a generated dataset on a loopback S3 server, mounted with pfs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true
python3 -u scripts/demo.py "$@"
