#!/usr/bin/env bash
# Federated fine-tuning of a pretrained model (docs/RESULTS.md, "Fine-tuning a pretrained model";
# issue 39): the small CNN pretrained centrally on Fashion-MNIST classes 0-4 (experiments.pretrain,
# 2 epochs of Adam 1e-3, one file per seed under runs/finetune/pretrained/), then fine-tuned
# federated on the whole training pool (all ten classes, Dirichlet(0.3) over 100 clients, 10 a
# round, 2 local epochs, client SGD lr 0.1; experiments/configs/fashion_mnist_cnn_dirichlet.cfg)
# for 40 rounds, on the TF backend. Variants, each at seeds 0-2 (VARIANT_seed<N>):
#   scratch:         the plain CNN from random weights, all of it trained and sent;
#   full:            the pretrained CNN, all of it trained and sent;
#   head:            the pretrained CNN frozen but its classifier (logits);
#   fedpara_adapter: the pretrained CNN frozen, FedPara adapters of rank 4 on fc1 (its Dense
#                    1600x128), the classifier trained: 2*4*(1600+128) + 1290 = 15,114 values sent;
#   lowrank_adapter: the same with low-rank (LoRA) adapters of rank 8 on fc1: the same 15,114.
# The convolutions stay frozen under both adapters (--keep_plain=conv1,conv2,logits), so that the
# two send exactly the same bytes. Rerunning the same command resumes each run and skips
# finished ones; arguments starting with -- go to every run.
# VARIANT_lr<LR> is VARIANT at client SGD lr LR (a learning-rate sweep, e.g. fedpara_adapter_lr0.3).
# Usage: scripts/finetune.sh [VARIANT...] [--flag=value...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/variants.sh
pretrained_dir=runs/finetune/pretrained
pretrain_seed() {   # writes the seed's pretrained weights once
  local seed="$1" file="$pretrained_dir/cnn_classes0-4_seed$1.h5"
  if [ ! -f "$file" ]; then
    .venv/bin/python -m experiments.pretrain --dataset=fashion_mnist --model=small_cnn \
        --classes=0,1,2,3,4 --epochs=2 --seed="$seed" --output="$file" \
        | tee "$pretrained_dir/cnn_classes0-4_seed$seed.json"
  fi
}
mkdir -p "$pretrained_dir"
read -r -a fixed <<< "$(fashion_partition_flags dir0.3)"
fixed+=(--rounds=40 --eval_every=5 --checkpoint_every=5)
declare -A variants=()
order=()
for seed in 0 1 2; do
  pretrain_seed "$seed"
  suffix=""; [ "$seed" != 0 ] && suffix="_seed$seed"
  weights="--pretrained=$pretrained_dir/cnn_classes0-4_seed$seed.h5 --seed=$seed"
  variants[scratch$suffix]="--parameterization=original --seed=$seed"
  variants[full$suffix]="--parameterization=original $weights"
  variants[head$suffix]="--parameterization=original $weights --trainable_layers=logits"
  variants[fedpara_adapter$suffix]="--parameterization=fedpara --rank=4 --adapters $weights --trainable_layers=logits --keep_plain=conv1,conv2,logits"
  variants[lowrank_adapter$suffix]="--parameterization=lowrank --rank=8 --adapters $weights --trainable_layers=logits --keep_plain=conv1,conv2,logits"
  order+=("fedpara_adapter$suffix" "lowrank_adapter$suffix" "head$suffix" "full$suffix" "scratch$suffix")
done
keep_going=1
run_variants "fine-tuning" "runs/finetune/fashion_cnn_dir0.3" "${fixed[@]}" -- "$@"
