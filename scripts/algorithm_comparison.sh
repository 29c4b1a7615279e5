#!/usr/bin/env bash
# The non-IID algorithm comparison behind docs/RESULTS.md ("FedPara with other algorithms"): one
# experiments.train run per <algorithm>_<parameterization> (e.g. scaffold_fedpara), each algorithm
# with the settings of the paper's Table 3 (FedProx mu 0.1; SCAFFOLD option II, server lr 1; FedDyn
# alpha 0.1; FedAdam server lr 0.01, client lr 10^-1.5). Rerunning the same command resumes each run
# from its checkpoint and skips finished ones; arguments starting with -- go to every run.
# Usage: scripts/algorithm_comparison.sh [NAME...] [--flag=value...]
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A algorithms=(
  [fedavg]="--algorithm=fedavg"
  [fedprox]="--algorithm=fedprox --fedprox_mu=0.1"
  [scaffold]="--algorithm=scaffold --server_learning_rate=1"
  [feddyn]="--algorithm=feddyn --feddyn_alpha=0.1"
  [fedadam]="--algorithm=fedadam --server_learning_rate=0.01 --client_learning_rate=0.0316"
)
declare -A variants=()
order=()
for p in original fedpara; do
  for a in fedavg fedprox scaffold feddyn fedadam; do
    variants[${a}_$p]="${algorithms[$a]} --parameterization=$p"
    order+=("${a}_$p")
  done
done
# shellcheck source=scripts/variants.sh
source scripts/variants.sh
run_variants dirichlet0.3 runs/algorithm_comparison/fashion_cnn_dirichlet0.3 \
    --flagfile=experiments/configs/fashion_mnist_cnn_dirichlet.cfg -- "$@"
