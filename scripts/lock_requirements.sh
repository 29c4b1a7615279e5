#!/usr/bin/env bash
# Re-resolves requirements.in in a scratch venv and rewrites requirements.txt with exact pins.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3.11 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q -r requirements.in
{
  echo "# Exact pins of the resolved stack (STACK.md). Generated from requirements.in by"
  echo "# scripts/lock_requirements.sh; TFF itself and data packages are in requirements-nodeps.txt."
  "$scratch/venv/bin/pip" freeze
} > requirements.txt
echo "requirements.txt rewritten"
