#!/usr/bin/env bash
# The capacity map of docs/RESULTS.md ("Where FedPara pays: the capacity map"): the small CNN on
# Fashion-MNIST (100 clients, 10 a round, batch 32, 40 rounds, --backend=tf; the flagfiles
# experiments/configs/fashion_mnist_cnn_iid.cfg, 1 local epoch, and ..._dirichlet.cfg with
# alpha 0.3, 2), FedPara against the low-rank model of the same size at six parameter budgets,
# client SGD at lr 0.1 for every model: the largest lr of the sweep at gamma 0.1 (RESULTS 1b) at
# which no model diverged on any seed (at its best, 0.3, low-rank diverged on a Dirichlet seed
# there, and here at the smallest budget on both partitions: docs/RESULTS.md says so). Each run
# records the aggregation error of every round; the trained kernels' ranks come from
# experiments.analysis.rank_use afterwards. A run that fails does not stop the others.
# Budgets (share of the original's 225,034 parameters; the classifier stays plain):
#   r2  FedPara rank 2 / low-rank rank 4    (4.0% / 4.1%)
#   r4  FedPara rank 4 / low-rank rank 8    (7.5% / 7.8%)
#   r8  FedPara rank 8 / low-rank rank 16   (14.9% / 15.9%)
#   g0  the rank rule at gamma 0            (19.9% / 19.8%)
#   g0.1  gamma 0.1                         (28.3% / 28.2%)
#   g0.3  gamma 0.3                         (44%)
# Names: fedpara_<budget>, lowrank_<budget>, and original (the reference); NAME_seed<N> is NAME
# with --seed=N. Default order: seed 0 of every budget from the smallest and the original's seed 0,
# then the same for seed 1, then seed 2, so that a stopped map already spans the budgets.
# Rerunning the same command resumes each run from its checkpoint and skips finished ones;
# arguments starting with -- go to every run.
# Usage: scripts/capacity_map.sh iid|dir0.3 [NAME...] [--flag=value...]
set -euo pipefail
cd "$(dirname "$0")/.."
partition="${1:?usage: $0 iid|dir0.3 [NAME...] [--flag=value...]}"; shift
# shellcheck source=scripts/variants.sh
source scripts/variants.sh
case "$partition" in
  iid|dir0.3) read -r -a fixed <<< "$(fashion_partition_flags "$partition")" ;;
  *) echo "$0: the partition must be iid or dir0.3; got $partition" >&2; exit 2 ;;
esac
fixed+=(--rounds=40 --backend=tf --client_learning_rate=0.1)
declare -A variants=([original]="--parameterization=original")
budgets=(r2 r4 r8 g0 g0.1 g0.3)
for r in 2 4 8; do
  variants[fedpara_r$r]="--parameterization=fedpara --rank=$r"
  variants[lowrank_r$r]="--parameterization=lowrank --rank=$((2 * r))"
done
for g in 0 0.1 0.3; do
  variants[fedpara_g$g]="--parameterization=fedpara --gamma=$g"
  variants[lowrank_g$g]="--parameterization=lowrank --gamma=$g"
done
order=()
for seed in 0 1 2; do
  suffix=""; [ "$seed" != 0 ] && suffix="_seed$seed"
  for budget in "${budgets[@]}"; do
    order+=("fedpara_$budget$suffix" "lowrank_$budget$suffix")
  done
  order+=("original$suffix")
done
keep_going=1
run_variants "$partition" "runs/capacity_map/fashion_cnn_${partition}" "${fixed[@]}" -- "$@"
