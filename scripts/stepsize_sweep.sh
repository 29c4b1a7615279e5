#!/usr/bin/env bash
# The step-size sweep behind docs/RESULTS.md ("Step-size rule: the sweep"): the small CNN on
# Fashion-MNIST, 20 rounds, seed 0, one experiments.train run per cell
#   <parameterization>[_<rule>]_<optimizer><lr>   e.g. fedpara_sgd0.1, lowrank_safe_adam0.003
# parameterization: original | lowrank | fedpara; rule: none (the paper's parameterisation) or
# safe (the step-size rule: under SGD the projected step, under Adam the scaled update) /
# matched (--factor_lr_scale); optimizer: sgd (lr 0.01 0.03 0.1 0.3) or adam
# (lr 0.001 0.003 0.01 0.03; the 0.03 column was added for the safe rule, whose best Adam lr was
# the top of the first grid). Partition iid (experiments/configs/fashion_mnist_cnn_iid.cfg) or dirichlet
# (fashion_mnist_cnn_dirichlet.cfg, Dirichlet(0.3)); --rounds=20 and --backend=tf for both.
# Rerunning the same command resumes each run from its checkpoint and skips finished ones;
# arguments starting with -- go to every run. With no NAME, every cell of the sweep in order.
# NAME_seed<N> is NAME with --seed=N. --rounds=N (N other than 20) puts the runs in their own
# folders, runs/stepsize_sweep/fashion_cnn_<partition>_r<N> (the seeds of RESULTS use 40).
# Usage: scripts/stepsize_sweep.sh iid|dirichlet [NAME...] [--rounds=N] [--flag=value...]
set -euo pipefail
cd "$(dirname "$0")/.."
partition="${1:?usage: $0 iid|dirichlet [NAME...] [--flag=value...]}"; shift
cfg="experiments/configs/fashion_mnist_cnn_${partition}.cfg"
[ -f "$cfg" ] || { echo "$0: no flagfile $cfg (the partition must be iid or dirichlet)" >&2; exit 2; }
declare -A variants=()
order=()
declare -A lrs=([sgd]="0.01 0.03 0.1 0.3" [adam]="0.001 0.003 0.01 0.03")
for opt in sgd adam; do
  for lr in ${lrs[$opt]}; do
    for cell in original lowrank fedpara lowrank_safe fedpara_safe lowrank_matched fedpara_matched; do
      p="${cell%%_*}"
      flags="--parameterization=$p --client_optimizer=$opt --client_learning_rate=$lr"
      [ "$cell" != "$p" ] && flags+=" --factor_lr_scale=${cell#*_}"
      variants[${cell}_${opt}${lr}]="$flags"
      # The matched cells (the former rule, for comparison) run only when named.
      [[ "$cell" == *_matched ]] || order+=("${cell}_${opt}${lr}")
    done
  done
done
rounds=20; names=(); extra=()
for arg in "$@"; do
  case "$arg" in
    --rounds=*) rounds="${arg#--rounds=}" ;;
    --*) extra+=("$arg") ;;
    *) names+=("$arg") ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --rounds must be a positive integer, got $rounds" >&2; exit 2; }
# shellcheck source=scripts/variants.sh
source scripts/variants.sh
prefix="runs/stepsize_sweep/fashion_cnn_${partition}"
[ "$rounds" -ne 20 ] && prefix+="_r$rounds"
[ "${#names[@]}" -gt 0 ] && order=("${names[@]}")
for name in "${order[@]}"; do
  flags="$(variant_flags "$name")" || exit 2
  out="$prefix/$name"
  # Beside each run: NAME.log (its output) and, when it diverged, NAME.diverged.txt (the runner's
  # message); a diverged cell is skipped on a rerun.
  if [ -f "$out.diverged.txt" ]; then echo "== $partition / $name: diverged before"; continue; fi
  echo "== $partition / $name"
  mkdir -p "$prefix"
  rc=0
  # shellcheck disable=SC2086
  .venv/bin/python -m experiments.train --flagfile="$cfg" --rounds="$rounds" --backend=tf \
      --eval_every=5 --checkpoint_every=5 $flags --progress=false --output_dir="$out" "${extra[@]}" \
      >>"$out.log" 2>&1 || rc=$?
  tail -n 3 "$out.log"
  if [ "$rc" -ne 0 ]; then
    grep -q 'training diverged' "$out.log" || { echo "$0: $name failed (exit $rc)" >&2; exit "$rc"; }
    grep 'training diverged' "$out.log" | tail -n1 > "$out.diverged.txt"
  fi
done
