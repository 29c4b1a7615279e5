# Sourced by the paper-claim scripts: runs experiments.train once per named variant.
# The caller defines the associative array `variants` (name -> flags) and the array `order`.
#   run_variants LABEL OUTPUT_PREFIX FIXED_FLAG... -- [VARIANT...] [--flag=value...]
# runs, for each VARIANT (default: `order`), the fixed flags, then the variant's, then the extra
# --flags, into OUTPUT_PREFIX/VARIANT; a finished run is skipped, an interrupted one resumed.
# VARIANT_seed<N> (e.g. fedpara_seed1) is VARIANT with --seed=N, in its own folder;
# VARIANT_lr<LR> (e.g. fedpara_lr0.3, fedpara_lr0.3_seed1) is VARIANT with
# --client_learning_rate=LR (a learning-rate sweep), in its own folder.
# A run that fails (e.g. diverges) stops the rest, unless the caller sets keep_going=1: then the
# failure is printed and the next variant runs (a rerun retries the failed one).
# variant_flags NAME: the flags of NAME in `variants`, or of BASE with --seed=N for BASE_seed<N>
# and with --client_learning_rate=LR for BASE_lr<LR>; exits 2 naming an unknown variant.
# fashion_partition_flags PARTITION: the fixed flags of the small Fashion-MNIST CNN's runs on a
# partition: iid (experiments/configs/fashion_mnist_cnn_iid.cfg, 1 local epoch), dir0.3 or dir0.1
# (..._dirichlet.cfg, 2 local epochs, Dirichlet label skew of that alpha); fails on another.
fashion_partition_flags() {
  case "$1" in
    iid) echo "--flagfile=experiments/configs/fashion_mnist_cnn_iid.cfg" ;;
    dir0.3|dir0.1) echo "--flagfile=experiments/configs/fashion_mnist_cnn_dirichlet.cfg --alpha=${1#dir}" ;;
    *) return 1 ;;
  esac
}

variant_flags() {
  local name="$1" base value
  if [ -n "${variants[$name]+x}" ]; then
    echo "${variants[$name]}"
  elif [[ "$name" =~ ^(.+)_seed([0-9]+)$ ]]; then
    value="${BASH_REMATCH[2]}"
    base="$(variant_flags "${BASH_REMATCH[1]}")" || exit 2
    echo "$base --seed=$value"
  elif [[ "$name" =~ ^(.+)_lr([0-9]*\.?[0-9]+)$ ]]; then
    value="${BASH_REMATCH[2]}"
    base="$(variant_flags "${BASH_REMATCH[1]}")" || exit 2
    echo "$base --client_learning_rate=$value"
  else
    echo "$0: unknown variant $name" >&2; exit 2
  fi
}

run_variants() {
  local label="$1" prefix="$2"
  shift 2
  local fixed=() names=() extra=() arg name
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do fixed+=("$1"); shift; done
  [ "$#" -gt 0 ] && shift
  for arg in "$@"; do
    case "$arg" in --*) extra+=("$arg") ;; *) names+=("$arg") ;; esac
  done
  [ "${#names[@]}" -gt 0 ] && order=("${names[@]}")
  local flags_of
  for name in "${order[@]}"; do
    flags_of="$(variant_flags "$name")" || exit 2
    echo "== $label / $name"
    # shellcheck disable=SC2086
    .venv/bin/python -m experiments.train "${fixed[@]}" $flags_of --progress=false \
        --output_dir="$prefix/$name" "${extra[@]}" \
      || { status=$?; [ "${keep_going:-0}" = 1 ] || exit "$status"
           echo "== $label / $name failed (exit $status); going on"; }
  done
}
