#!/usr/bin/env bash
# The README demo's three models over seeds: experiments/configs/mnist5k_quick.cfg (what
# `make demo` runs, seed 0) as one experiments.train run per model and seed, into
# runs/mnist5k_quick_seeds/NAME (seed 0) and NAME_seed<N>; table:
#   python -m experiments.analysis.results_table --seeds --runs='runs/mnist5k_quick_seeds/*'
# Rerunning the same command resumes each run and skips finished ones.
# Usage: scripts/demo_seeds.sh [NAME...] [--flag=value...]   (default: seeds 0-2 of each model)
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A variants=(
  [original]="--parameterization=original"
  [lowrank]="--parameterization=lowrank"
  [fedpara]="--parameterization=fedpara"
)
order=()
for seed in "" _seed1 _seed2; do
  for p in original lowrank fedpara; do order+=("$p$seed"); done
done
# shellcheck source=scripts/variants.sh
source scripts/variants.sh
run_variants demo runs/mnist5k_quick_seeds --flagfile=experiments/configs/mnist5k_quick.cfg -- "$@"
