# Shared by run-server and run-tests: make sure .venv exists with postroom installed.
# Usage: EXTRAS="[test]" (or "") then ". scripts/_venv.sh" (POSIX sh passes no arguments to ".")
set -eu
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "postroom needs Python 3.11 or newer (python3 not found)" >&2; exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "postroom needs Python 3.11 or newer ($("$PY" --version) found)" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3-venv is missing: run 'sudo apt-get install python3-venv' and retry" >&2; exit 1
        fi
    fi
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
