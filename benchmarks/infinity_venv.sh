#!/usr/bin/env bash
# infinity-emb 0.0.78, the peer server of benchmarks/run_server.py, in its own venv (its pins clash with ours).
# torch is pinned first so that pip takes the CPU build. Usage: bash benchmarks/infinity_venv.sh [/work/inf-venv]
set -euo pipefail
V=${1:-/work/inf-venv}
python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q torch==2.13.0
"$V/bin/pip" install -q 'infinity-emb[server,torch,optimum]==0.0.78'
"$V/bin/infinity_emb" v2 --help > /dev/null && echo "infinity venv ready: $V"
