# Sourced by the paper-claim scripts: runs experiments.train once per named variant.
# The caller defines the associative array `variants` (name -> flags) and the array `order`.
#   run_variants LABEL OUTPUT_PREFIX FIXED_FLAG... -- [VARIANT...] [--flag=value...]
# runs, for each VARIANT (default: `order`), the fixed flags, then the variant's, then the extra
# --flags, into OUTPUT_PREFIX/VARIANT; a finished run is skipped, an interrupted one resumed.
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
  for name in "${order[@]}"; do
    [ -n "${variants[$name]+x}" ] || { echo "$0: unknown variant $name" >&2; exit 2; }
    echo "== $label / $name"
    # shellcheck disable=SC2086
    .venv/bin/python -m experiments.train "${fixed[@]}" ${variants[$name]} --progress=false \
        --output_dir="$prefix/$name" "${extra[@]}"
  done
}
