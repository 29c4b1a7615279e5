#!/usr/bin/env bash
# The runs behind docs/RESULTS.md ("Averaging factors, averaging kernels"): the small CNN on
# Fashion-MNIST (100 clients, 10 a round, batch 32, 40 rounds, --backend=tf; the flagfiles
# experiments/configs/fashion_mnist_cnn_iid.cfg, 1 local epoch, and ..._dirichlet.cfg, 2), one
# experiments.train run per name, each recording the aggregation error of every round.
# Partitions: iid | dir0.3 | dir0.1 (Dirichlet label skew with alpha 0.3 or 0.1).
# Names: fedpara, lowrank (gamma 0.1, client SGD lr 0.1: the flagfiles' model and step), and
#   <model>_kernel       the same with --aggregation=kernel_mean;
#   <model>_adam         client Adam at each model's best lr of the step-size sweep (RESULTS 1b:
#                        0.01 for FedPara, 0.003 for low-rank, on both partitions);
#   <model>_adam_kernel  that with --aggregation=kernel_mean.
# NAME_seed<N> is NAME with --seed=N. Default order: seeds 0-2 of fedpara and lowrank on every
# partition, then on dir0.3 the kernel-mean and Adam runs, seed by seed.
# Rerunning the same command resumes each run from its checkpoint and skips finished ones;
# arguments starting with -- go to every run.
# Usage: scripts/aggregation_runs.sh iid|dir0.3|dir0.1 [NAME...] [--flag=value...]
set -euo pipefail
cd "$(dirname "$0")/.."
partition="${1:?usage: $0 iid|dir0.3|dir0.1 [NAME...] [--flag=value...]}"; shift
# shellcheck source=scripts/variants.sh
source scripts/variants.sh
case "$partition" in
  iid|dir0.3|dir0.1) read -r -a fixed <<< "$(fashion_partition_flags "$partition")" ;;
  *) echo "$0: the partition must be iid, dir0.3 or dir0.1; got $partition" >&2; exit 2 ;;
esac
fixed+=(--rounds=40 --backend=tf)
declare -A adam_lr=([fedpara]=0.01 [lowrank]=0.003)
declare -A variants=()
for model in fedpara lowrank; do
  variants[$model]="--parameterization=$model"
  variants[${model}_kernel]="--parameterization=$model --aggregation=kernel_mean"
  variants[${model}_adam]="--parameterization=$model --client_optimizer=adam --client_learning_rate=${adam_lr[$model]}"
  variants[${model}_adam_kernel]="${variants[${model}_adam]} --aggregation=kernel_mean"
done
order=()
for seed in 0 1 2; do
  suffix=""; [ "$seed" != 0 ] && suffix="_seed$seed"
  order+=("fedpara$suffix" "lowrank$suffix")
done
if [ "$partition" = dir0.3 ]; then
  for seed in 0 1 2; do
    suffix=""; [ "$seed" != 0 ] && suffix="_seed$seed"
    for name in fedpara_kernel lowrank_kernel fedpara_adam lowrank_adam fedpara_adam_kernel \
                lowrank_adam_kernel; do
      order+=("$name$suffix")
    done
  done
fi
run_variants "$partition" "runs/aggregation/fashion_cnn_${partition}" "${fixed[@]}" -- "$@"
