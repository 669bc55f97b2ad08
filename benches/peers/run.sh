#!/usr/bin/env bash
# Peers of `echoview bench` in one run: see peers.py. Usage:
#   benches/peers/run.sh [peers.py options]      (e.g. --out target/peers.json --runs 20)
# Builds a virtualenv in target/peers-venv (onnxruntime, numpy, CPU torch + torchvision from
# download.pytorch.org) unless PEERS_VENV names an existing one with those packages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${PEERS_VENV:-$repo/target/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
    # The CPU wheels avoid downloading CUDA; without that index, plain `torch` works too.
    "$venv/bin/pip" install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cpu \
        || echo "run.sh: no CPU torch index reachable; install torch into $venv or pass --no-torch" >&2
fi
exec "$venv/bin/python" "$here/peers.py" "$@"
