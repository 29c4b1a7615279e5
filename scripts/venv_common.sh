# Sourced by scripts/setup_env.sh and scripts/setup_keras3_env.sh: the steps both venvs share.

# venv_is_current VENV HASH: true when VENV was set up from files hashing to HASH.
venv_is_current() {
  [ -f "$1/.fedpara-setup-stamp" ] && [ "$(cat "$1/.fedpara-setup-stamp")" = "$2" ] &&
    [ -x "$1/bin/python" ]
}

# find_python MIN MAX CANDIDATE...: prints the first candidate whose version is in [MIN, MAX]
# (minor versions of Python 3, e.g. 9 11), or fails.
find_python() {
  local low="$1" high="$2" candidate
  shift 2
  for candidate in "$@"; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
        "import sys; sys.exit(not ((3, $low) <= sys.version_info[:2] <= (3, $high)))" \
        2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# venv_pip_install VENV ARGS...: pip install into VENV, without the registry mirror's
# "Location ... is ignored" warnings.
venv_pip_install() {
  local venv="$1"
  shift
  "$venv/bin/python" -m pip --disable-pip-version-check -q install "$@" \
    2> >(grep -v 'is ignored: it is neither' >&2)
}
