#!/usr/bin/env bash
# One entry point for people and CI.
#   bash run.sh demo     set up .venv (if needed) and start the demo
#   bash run.sh test     set up .venv + chromium (if needed) and run the whole test suite
# Both are idempotent: a second run reuses .venv unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

setup() {  # $1: "base" or "dev"
    local extras="" stamp want
    [ "$1" = dev ] && extras="[dev]"
    stamp=".venv/.installed-$1"
    want=$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-40)
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "== installing xcam-viz$extras into .venv (first run takes a few minutes)"
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -c constraints.txt -e ".$extras"
        .venv/bin/python -c "import torch, torchvision" \
            || { echo "torch/torchvision do not import: see constraints.txt" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}

browser() {
    if ! command -v chromium >/dev/null; then
        echo "== installing Debian's chromium for the browser tests"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
    fi
}

case "${1:-}" in
    demo)
        shift; setup base
        exec .venv/bin/xcam-viz demo "$@" ;;
    test)
        shift; setup dev; browser
        exec .venv/bin/python -m pytest "$@" ;;
    *)
        echo "usage: bash run.sh demo | test [pytest args]" >&2; exit 2 ;;
esac
