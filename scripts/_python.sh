# Shared by scripts/start and scripts/test: make .venv with Python >= 3.11 and install boxoffice into it.
# Usage: source scripts/_python.sh; ensure_venv [EXTRA]
ensure_venv() {
    local extra="${1:-}"
    local python="${PYTHON:-}"
    if [ -z "$python" ]; then
        for candidate in python3.13 python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
                python="$candidate"
                break
            fi
        done
    fi
    if [ -z "$python" ]; then
        echo "boxoffice needs Python 3.11 or newer (set PYTHON=/path/to/python3.11 if it is not on PATH)" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    local target="."
    [ -n "$extra" ] && target=".[$extra]"
    .venv/bin/python -m pip install -qq --disable-pip-version-check -e "$target"
}
