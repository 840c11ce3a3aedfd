"""`bge-export bench`: bundles against FlagEmbedding (fp32, CPU) and optimum's ONNX export, one process.

Every contender gets the same texts (exactly ``seq`` tokens each; for the decoder rerankers and the embedders'
queries, the whole model input, prompt and instruction included, is about ``seq`` tokens) and the same batch; runs
are interleaved (round-robin, rotating order) after warm-up. Every ONNX Runtime contender (ours and optimum's graph)
runs with the same session settings and thread spinning off, so one contender's idle spinning threads never steal
the cores from the next one. Timings per contender:
  e2e          the public call: ``encode(texts)`` / ``compute_score(pairs)`` (tokenize + batch + run + post-process);
               the LLM embedders: ``encode_corpus(texts)``
  e2e-queries  the LLM embedders only: ``encode_queries(queries)`` with a retrieval instruction
  engine       the model alone on pre-tokenized, pre-padded tensors
Rows: median / p95 / p99 latency, tokens/s (real tokens the model sees), GFLOP/s of the work each contender does
(a CLS-only last layer counts as such) and its fraction of the peak of its own precision measured here, the
speed-up over FlagEmbedding, and a sanity check: the max abs difference of
each e2e result from FlagEmbedding's on the same inputs. Output: bench.jsonl, bench.md, bench.png.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bge_export.errors import BgeExportError
from bge_export.families import family_from_manifest, get_family
from runtimes._optional import available, require

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_SEQS = (16, 128, 512)


def add_arguments(p) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles of the same checkpoint to time together")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)), help="default: 1,8,32")
    p.add_argument("--seq-lens", default=",".join(map(str, DEFAULT_SEQS)), help="tokens per text, default: 16,128,512")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender and cell (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="extra untimed runs per contender and cell (default 1)")
    p.add_argument("--reference-device", choices=("cpu", "cuda"), default="cpu",
                   help="FlagEmbedding in fp32 on CPU (default), or in fp16 (use_fp16=True) on the first CUDA GPU: "
                        "the PyTorch baseline of GPU bundles")
    p.add_argument("--no-flagmodel", action="store_true", help="leave out FlagEmbedding")
    p.add_argument("--no-optimum", action="store_true", help="leave out optimum's ONNX export")
    p.add_argument("--no-torch-bf16", action="store_true",
                   help="leave out FlagEmbedding's model cast to bf16 in plain torch (timed on CPUs with bf16 only)")
    p.add_argument("--no-optimum-intel", action="store_true",
                   help="leave out optimum-intel's OpenVINO export, fp32 and bf16 (encoders; when it is installed)")
    p.add_argument("--quick", action="store_true",
                   help="a first look in about a minute: batch 1,8 x 16,128 tokens, 3 timed runs (overrides those)")
    p.add_argument("--out", default="bench-results", help="folder for bench.jsonl, bench.md, bench.png")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")


def _ints(text: str, what: str) -> list[int]:
    from bge_export.options import parse_int_list

    return list(parse_int_list(text, what, example="1,8,32", error=BgeExportError))


@dataclass
class Contender:
    name: str
    e2e: Callable[[str, object, int, int], object]  # (mode, inputs, batch, seq) -> the public call's result
    engine: Callable[[object, int, int, "Workload"], Callable[[], object]]  # prepares inputs, returns the timed call
    peak: str = "fp32"  # the PEAKS kind its GFLOP/s are divided by (the precision its matmuls run in)
    variant: dict | None = None  # a bundle's variant, where it changes the work done (Family.flops)


@dataclass
class Workload:
    """What the API recipes below get to build a cell's inputs: exact-length texts, a token counter, and the first
    bundle's runtime model (whose tokenizer builds the tensors every engine contender runs on)."""
    texts: Callable[..., list[str]]  # (n, length, offset=0) -> n texts of exactly `length` tokens
    n_tok: Callable[[str], int]
    model: object


def exact_length_texts(tokenize: Callable[[str], int], words: list[str], n: int, seq: int) -> list[str]:
    """``n`` distinct texts of exactly ``seq`` tokens (special tokens included) under ``tokenize``."""
    out = []
    for i in range(n):
        ws = words[(i * 37) % len(words):] + words
        lo, hi = 0, min(len(ws), seq)
        while lo < hi:  # largest prefix that fits
            mid = (lo + hi + 1) // 2
            if tokenize(" ".join(ws[:mid])) <= seq:
                lo = mid
            else:
                hi = mid - 1
        text = " ".join(ws[:lo])
        while tokenize(text) < seq:
            text += " a"
        if tokenize(text) != seq:
            raise BgeExportError(f"could not build a text of exactly {seq} tokens")
        out.append(text)
    return out


def _timed_gflops(call, flops: float, sync=lambda: None, seconds: float = 1.0) -> float:
    """GFLOP/s of ``call`` (``flops`` each) repeated for about ``seconds`` after one warm-up (``sync`` waits for
    the device)."""
    call()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        n += 1
    sync()
    return n * flops / (time.perf_counter() - start) / 1e9


def _matmul_gflops(a, sync=lambda: None, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated square matmuls ``a @ a``."""
    return _timed_gflops(lambda: a @ a, 2 * a.shape[0] ** 3, sync, seconds)


# The CPU peaks that "% of peak" divides by, each measured with the engine that runs that precision: ONNX
# Runtime's own MatMul (fp32) and MatMulInteger (int8, uint8 activations x the bundle's weight type) on a large
# square GEMM, with the session settings the bundles get here (all cores, no spinning). A BLAS or torch GEMM
# can take another path than ONNX Runtime's (on an AMD EPYC a torch GEMM was slower), which put fp32 rows
# above 100%.
PEAKS = {"fp32": "ONNX Runtime MatMul, fp32", "int8-QInt8": "ONNX Runtime MatMulInteger, u8 x s8",
         "int8-QUInt8": "ONNX Runtime MatMulInteger, u8 x u8",
         "bf16": "OpenVINO chain of 8 MatMuls, bf16 inference precision",
         "int8-ov": "OpenVINO chain of 8 MatMuls between FakeQuantize (u8 x i8)"}
PEAK_N = 2048


PEAK_SIZES = (512, 1024, PEAK_N)


def peak_gflops(kind: str, sizes=PEAK_SIZES, seconds: float = 0.7, tries: int = 2) -> float | None:
    """The measured peak of one PEAKS kind: the best timing over square GEMM sizes and ``tries`` (a peak is a
    maximum: on the 2-core AMD EPYC of issue 12 ONNX Runtime's fp32 MatMul ran 141 GFLOP/s at 512^3 and 122-128 at
    2048^3, and one 1.5 s timing at 2048^3 ranged from 110 to 145 between runs). None where this CPU cannot run it
    (bf16 without bf16 instructions)."""
    measure = ov_matmul_peak_gflops if kind in ("bf16", "int8-ov") else ort_matmul_peak_gflops
    values = [measure(kind, n, seconds) for n in sizes for _ in range(tries)]
    return None if values[0] is None else max(values)


PEAK_CHAIN = 8  # OpenVINO peaks: MatMuls in a chain, so the fp32 <-> bf16 / int8 reorders at the ends amortize


def ov_matmul_peak_gflops(kind: str, n: int = PEAK_N, seconds: float = 1.5, depth: int = PEAK_CHAIN) -> float | None:
    """GFLOP/s (int8: GOP/s) of OpenVINO's CPU MatMuls: ``depth`` n x n x n MatMuls in a chain, fp32 weights
    compiled at bf16 inference precision, or int8 between FakeQuantize nodes (OpenVINO's low-precision path, as
    NNCF emits it). A chain, as in a model: one MatMul alone pays the conversion of its fp32 input and output each
    call and undercounted on the AMX Xeon of issue 12 (a base-sized cross-encoder's bf16 rows reached 138% of
    that single-MatMul "peak")."""
    ov = require("openvino")
    from openvino import opset13 as ops

    from runtimes.backends.openvino import device_supports_bf16

    core = ov.Core()
    if kind == "bf16" and not device_supports_bf16(core):
        return None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    param = ops.parameter([n, n], ov.Type.f32, name="a")
    lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    x = param
    for _ in range(depth):
        weight = ops.constant(rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n)))  # values O(1)
        if kind == "int8-ov":
            x = ops.matmul(ops.fake_quantize(x, lo, hi, lo, hi, 256), ops.fake_quantize(weight, lo, hi, lo, hi, 255),
                           False, False)
        else:
            x = ops.matmul(x, weight, False, False)
    model = ov.Model([x], [param], "peak")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if kind == "bf16" else "f32",
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return _timed_gflops(lambda: request.infer({0: a}), depth * 2 * n ** 3, seconds=seconds)


def ort_matmul_peak_gflops(kind: str = "fp32", n: int = PEAK_N, seconds: float = 1.5) -> float:
    """GFLOP/s (int8: GOP/s) of ONNX Runtime's MatMul / MatMulInteger on an n x n x n GEMM (see PEAKS)."""
    require("onnx")
    ort = require("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from runtimes.backends.ort import session_options

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        node, a_type, out_type = helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = rng.integers(-128, 128, (n, n), dtype=np.int8) if kind == "int8-QInt8" else \
            rng.integers(0, 256, (n, n), dtype=np.uint8)
        node, a_type, out_type = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", out_type, [n, n])],
                              initializer=[numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(ort, allow_spinning=False),
                                providers=["CPUExecutionProvider"])
    return _timed_gflops(lambda: sess.run(None, {"a": a}), 2 * n ** 3, seconds=seconds)


def contender_peak(manifest: dict) -> str:
    """The PEAKS kind of a bundle: the precision its matmuls run in. ONNX Runtime int8 by its weight type (older
    bundles: signed); OpenVINO bf16, static int8, or fp32 (also weight-only int8, whose compute is float)."""
    quant = (manifest.get("build") or {}).get("quantization") or {}
    if manifest["engine"]["kind"] == "openvino":
        if manifest["engine"].get("inference_precision") == "bf16":
            return "bf16"
        return "int8-ov" if quant.get("method") == "nncf.quantize" else "fp32"
    if manifest["precision"] != "int8":
        return "fp32"
    return "int8-" + quant.get("weight_type", "QInt8")


# How each FlagEmbedding API is driven, for our runtime and for the reference alike: the workload of a cell
# (inputs), the public calls per mode (modes), the real tokens per call (tokens, default batch x seq), and the
# pre-tokenized tensors + bare model call (engine). m3 runs all three heads. Optional: the options both sides are
# built with (options, for runtimes.load and the FlagEmbedding object; the family adds its variant's own, e.g.
# cutoff layers) and what the sanity check compares (check: "vectors" = cosine + max abs, "scores" = max abs
# relative to the score spread).
_ALL_HEADS = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
EMBEDDER_QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query."


def _hf_tensors(ref, x, s, w):
    return ref.tokenizer(x, padding=True, truncation=True, max_length=s, return_tensors="pt")


def _decoder_pairs(model, pairs, s):
    """The runtime's token-level pairs for ``compute_score(pairs, max_length=s)`` (instructions applied)."""
    def inst(fmt, instruction, text):
        return text if instruction is None else model.apply_instruction(fmt, instruction, text)

    qs = [inst(model.query_instruction_format, model.query_instruction_for_rerank, q) for q, _ in pairs]
    ps = [inst(model.passage_instruction_format, model.passage_instruction_for_rerank, p) for _, p in pairs]
    return model.build_pairs(qs, ps, s * 3 // 4, s, None)


def _decoder_pair_inputs(w, b, s):
    """b pairs whose whole model input (bos, 'A: ' query of s/4 tokens, 'B: ' passage, separators, prompt) is about
    s tokens: the passage gives up what the prompt and instructions take."""
    q_len = s // 4
    probe = [[w.texts(1, q_len)[0], w.texts(1, s - q_len, offset=5)[0]]]
    overhead = len(_decoder_pairs(w.model, probe, s)[0].ids) - s
    p_len = max(8, s - q_len - overhead)
    return [list(p) for p in zip(w.texts(b, q_len), w.texts(b, p_len, offset=5))]


def _decoder_pair_tokens(w, x, b, s):
    n = sum(len(e.ids) for e in _decoder_pairs(w.model, x, s))
    return {"e2e": n, "engine": n}


def _decoder_ref_tensors(ref, x, s, w):
    """The reference's engine runs on exactly the tensors of the bundle's engine (token-identical to FlagEmbedding's
    own pair building: checked by the parity suite)."""
    torch = require("torch")
    feeds = w.model.feeds_for(_decoder_pairs(w.model, x, s))
    enc = {k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")}
    if "query_lengths" in feeds:  # the lightweight reranker takes them as python lists
        enc["query_lengths"] = feeds["query_lengths"].tolist()
        enc["prompt_lengths"] = feeds["prompt_lengths"].tolist()
    return enc


def _llm_rerank_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.base import last_logit_pool

    logits = ref.model(**enc, output_hidden_states=True).logits
    return last_logit_pool(logits, enc["attention_mask"])[:, ref.yes_loc]


def _layerwise_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.layerwise import last_logit_pool_layerwise

    out = ref.model(**enc, output_hidden_states=True, cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_layerwise(logits, enc["attention_mask"]) for logits in out.logits]


def _lightweight_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.lightweight import last_logit_pool_lightweight

    out = ref.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True,
                    compress_layer=ref.compress_layers, compress_ratio=ref.compress_ratio,
                    query_lengths=enc["query_lengths"], prompt_lengths=enc["prompt_lengths"],
                    cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_lightweight(logits, mask) for logits, mask in zip(out.logits, out.attention_masks)]


def _decoder_reranker(forward):
    return {
        "inputs": _decoder_pair_inputs,
        "modes": {"e2e": lambda obj, x, b, s: obj.compute_score(x, batch_size=b, max_length=s)},
        "tokens": _decoder_pair_tokens,
        "runtime_encode": _decoder_pairs,
        "ref_tensors": _decoder_ref_tensors,
        "ref_forward": forward,
        "check": "scores",
    }


def _query_overhead(model, n_tok, text):
    """Tokens an embedder's query template (instruction, ICL suffix) adds to a query text."""
    formatted = model.apply_instruction(model.query_instruction_format, model.query_instruction_for_retrieval, text)
    return n_tok(formatted + getattr(model, "suffix", "")) - n_tok(text)


def _embedder_inputs(w, b, s):
    """Corpus texts of exactly s tokens; queries shortened so that the templated query is about s tokens."""
    overhead = _query_overhead(w.model, w.n_tok, w.texts(1, s // 2)[0])
    return {"corpus": w.texts(b, s), "queries": w.texts(b, max(8, s - overhead), offset=3)}


def _embedder_tokens(w, x, b, s):
    q = sum(w.n_tok(q) + _query_overhead(w.model, w.n_tok, q) for q in x["queries"])
    return {"e2e": b * s, "e2e-queries": q, "engine": b * s}


def _embedder_ref_tensors(ref, x, s, w):
    torch = require("torch")
    feeds = w.model.feeds_for(w.model.tokenizer.encode(x["corpus"], s))
    return {k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")}


def _embedder_forward(ref, enc):
    from FlagEmbedding.inference.embedder.decoder_only.base import last_token_pool

    return last_token_pool(ref.model(**enc, return_dict=True).last_hidden_state, enc["attention_mask"])


_LLM_EMBEDDER = {
    "inputs": _embedder_inputs,
    "modes": {"e2e": lambda obj, x, b, s: obj.encode_corpus(x["corpus"], batch_size=b, max_length=s),
              "e2e-queries": lambda obj, x, b, s: obj.encode_queries(x["queries"], batch_size=b, max_length=s)},
    "tokens": _embedder_tokens,
    "runtime_encode": lambda model, x, s: model.tokenizer.encode(x["corpus"], s),
    "ref_tensors": _embedder_ref_tensors,
    "ref_forward": _embedder_forward,
    "options": {"query_instruction_for_retrieval": EMBEDDER_QUERY_INSTRUCTION},
    "check": "vectors",
}

API_CALLS = {
    "FlagModel": {
        "inputs": lambda w, b, s: w.texts(b, s),
        "modes": {"e2e": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s)},
        "runtime_encode": lambda model, x, s: model.tokenizer.encode(x, s),
        "ref_tensors": _hf_tensors,
        "ref_forward": lambda ref, enc: ref.model(**enc, return_dict=True).last_hidden_state[:, 0],
        "check": "vectors",
        # a plain Hugging Face encoder whose pooled hidden state is the output: the peers that export or cast the
        # checkpoint themselves (optimum, optimum-intel, torch bf16 end to end) can run it
        "hf_encoder": True,
    },
    "BGEM3FlagModel": {
        "inputs": lambda w, b, s: w.texts(b, s),
        "modes": {"e2e": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s, **_ALL_HEADS)},
        "runtime_encode": lambda model, x, s: model.tokenizer.encode(x, s),
        "ref_tensors": _hf_tensors,
        "ref_forward": lambda ref, enc: ref.model(enc, **_ALL_HEADS),
        "check": "vectors",  # the dense vectors
    },
    "FlagReranker": {  # pairs of a query of s/4 tokens and a passage filling the rest: s tokens per pair
        "inputs": lambda w, b, s: [list(p) for p in zip(w.texts(b, s // 4), w.texts(b, s - s // 4, offset=5))],
        "modes": {"e2e": lambda obj, x, b, s: obj.compute_score(x, batch_size=b, max_length=s)},
        "runtime_encode": lambda model, x, s: model.tokenizer.encode_pairs([q for q, _ in x], [p for _, p in x],
                                                                         s * 3 // 4, s),
        "ref_tensors": lambda ref, x, s, w: ref.tokenizer([q for q, _ in x], [p for _, p in x], padding=True,
                                                          truncation="only_second", max_length=s, return_tensors="pt"),
        "ref_forward": lambda ref, enc: ref.model(**enc, return_dict=True).logits,
        "check": "scores",
    },
    # decoder families: compute_score with the bundle's cutoff layers / compression (the family builds the
    # reference with the same settings), encode_corpus / encode_queries for the embedders
    "FlagLLMReranker": _decoder_reranker(_llm_rerank_forward),
    "LayerWiseFlagLLMReranker": _decoder_reranker(_layerwise_forward),
    "LightWeightFlagLLMReranker": _decoder_reranker(_lightweight_forward),
    "FlagLLMModel": _LLM_EMBEDDER,
    "FlagICLModel": _LLM_EMBEDDER,
}


def _as_array(out) -> np.ndarray | None:
    """A public call's result as a float array for the sanity check (m3: its dense vectors)."""
    if isinstance(out, dict):
        out = out.get("dense_vecs")
    try:
        return np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def output_check(kind: str, got, ref) -> dict:
    """How far a contender's public-call result is from FlagEmbedding's on the same inputs."""
    g, r = _as_array(got), _as_array(ref)
    if g is None or r is None or g.shape != r.shape:
        return {}
    out = {"check_max_abs": float(np.abs(g - r).max())}
    if kind == "scores":
        out["check_rel_spread"] = out["check_max_abs"] / max(float(r.max() - r.min()), 1e-12)
    else:
        g2, r2 = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])
        cos = (g2 * r2).sum(-1) / np.maximum(np.linalg.norm(g2, axis=-1) * np.linalg.norm(r2, axis=-1), 1e-30)
        out["check_cosine_min"] = float(cos.min())
    return out


def _bundle_contender(path: Path, log) -> tuple[Contender, dict, object]:
    import runtimes

    m = runtimes.open_bundle(path, verify=False).manifest
    api = API_CALLS.get(m.runtime["api"], {})
    cpu = m.engine["kind"] == "onnxruntime" and m.engine["providers"][:1] == ["CPUExecutionProvider"]
    backend = {"allow_spinning": False} if cpu else {}
    model = runtimes.load(path, backend_options=backend, **api.get("options", {}))

    def engine(x, b, s, w):
        feeds = model.feeds_for(api["runtime_encode"](model, x, s))
        return lambda: model.backend.infer(feeds)

    def e2e(mode, x, b, s):
        return api["modes"][mode](model, x, b, s)

    peak = contender_peak(m.data)
    name = f"bge-export {m.target}" + ("-static" if peak == "int8-ov" else "")  # --ov-int8 static beside weights
    return Contender(name, e2e, engine, peak, m.data["variant"]), m.data, model


def _reference_contender(family, device: str = "cpu") -> Contender:
    from bge_export.parity import quiet_stderr

    api = API_CALLS[family.reference_api]
    # the parity reference (fp32 on CPU), or PyTorch fp16 eager on the GPU, with the bundle's variant (cutoff
    # layers, compression) and the options
    cuda = device == "cuda"
    ref = family.reference(**api.get("options", {}), **({"use_fp16": True, "devices": "cuda:0"} if cuda else {}))

    def e2e(mode, x, b, s):
        with quiet_stderr():  # FlagEmbedding's tqdm bars
            return api["modes"][mode](ref, x, b, s)

    return Contender(f"FlagEmbedding {family.reference_api} (torch {'fp16 CUDA' if cuda else 'fp32'})", e2e,
                     _reference_engine(ref, api, cuda), "gpu-fp16" if cuda else "fp32")


def _reference_engine(ref, api: dict, cuda: bool = False):
    """The engine-only call of a FlagEmbedding object's model: its pre-tokenized tensors and bare forward."""
    torch = require("torch")

    def engine(x, b, s, w):
        enc = api["ref_tensors"](ref, x, s, w)
        ref.model.eval()
        moved = not cuda

        def call():
            nonlocal enc, moved
            if not moved:  # FlagEmbedding moves (and halves) its model in its first public call, the warm-up
                device = next(ref.model.parameters()).device
                enc = {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()}
                moved = True
            with torch.no_grad():
                out = api["ref_forward"](ref, enc)
            if cuda:
                torch.cuda.synchronize()
            return out
        return call

    return engine


def _cls_e2e(hidden):
    """encode(texts) of a plain Hugging Face encoder export: ``hidden(texts, seq)`` -> last hidden state per batch,
    then the CLS row, L2-normalised (FlagModel's default pooling)."""
    def e2e(mode, texts, b, s):
        outs = []
        for i in range(0, len(texts), b):
            h = np.asarray(hidden(texts[i:i + b], s))[:, 0]
            outs.append(h / np.linalg.norm(h, axis=-1, keepdims=True))
        return np.concatenate(outs)

    return e2e


def _optimum_contender(ckpt_path: str, workdir: Path) -> Contender:
    ort_mod = require("optimum.onnxruntime")
    transformers = require("transformers")
    ort = require("onnxruntime")
    ort_mod.ORTModelForFeatureExtraction.from_pretrained(ckpt_path, export=True).save_pretrained(str(workdir / "optimum"))
    # optimum's exported graph, run with exactly the session settings our bundles get in this benchmark
    from runtimes.backends.ort import session_options

    session = ort.InferenceSession(str(workdir / "optimum" / "model.onnx"), session_options(ort, allow_spinning=False),
                                   providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(ckpt_path)
    names = [i.name for i in session.get_inputs()]

    def feeds(texts, s):
        enc = tok(texts, padding=True, truncation=True, max_length=s, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in names}

    def engine(texts, b, s, w):
        f = feeds(texts, s)
        return lambda: session.run(None, f)

    return Contender("optimum ONNX export (ORT CPU)", _cls_e2e(lambda texts, s: session.run(None, feeds(texts, s))[0]),
                     engine)


def _torch_bf16_contender(family) -> Contender:
    """FlagEmbedding's own torch model cast to bf16: what a user gets from plain torch on a bf16 CPU (FlagEmbedding
    itself cannot: on CPU its encode calls ``model.float()``). Engine only: the reference's pre-tokenized call;
    end to end (APIs marked hf_encoder): the reference's tokenizer, the bf16 forward, its pooling and normalisation."""
    torch = require("torch")
    api = API_CALLS[family.reference_api]
    ref = family.reference(**api.get("options", {}))
    ref.model.to(torch.bfloat16).eval()

    def e2e(mode, texts, b, s):
        outs = []
        for i in range(0, len(texts), b):
            enc = ref.tokenizer(texts[i:i + b], padding=True, truncation=True, max_length=s, return_tensors="pt")
            with torch.inference_mode():
                hidden = ref.model(**enc, return_dict=True).last_hidden_state
                v = ref.pooling(hidden, enc["attention_mask"]).float()
                if ref.normalize_embeddings:
                    v = torch.nn.functional.normalize(v, dim=-1)
            outs.append(v.numpy())
        return np.concatenate(outs)

    return Contender("torch bf16 (FlagEmbedding's model cast to bf16)", e2e if api.get("hf_encoder") else None,
                     _reference_engine(ref, api), "bf16")


def _optimum_intel_contenders(ckpt_path: str, workdir: Path, precisions=("f32", "bf16")) -> list[Contender]:
    """optimum-intel's OpenVINO export (``OVModelForFeatureExtraction``, its defaults), compiled at each inference
    precision. OpenVINO's CPU default is bf16 where the CPU has it, so fp32 is asked for explicitly."""
    intel = require("optimum.intel")
    transformers = require("transformers")
    folder = workdir / "optimum-intel"
    intel.OVModelForFeatureExtraction.from_pretrained(ckpt_path, export=True).save_pretrained(str(folder))
    tok = transformers.AutoTokenizer.from_pretrained(ckpt_path)

    def feeds(texts, s):
        return dict(tok(texts, padding=True, truncation=True, max_length=s, return_tensors="np"))

    out = []
    for precision in precisions:
        model = intel.OVModelForFeatureExtraction.from_pretrained(
            str(folder), ov_config={"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})

        def engine(texts, b, s, w, model=model):
            f = feeds(texts, s)
            return lambda: model(**f)

        label = "bf16" if precision == "bf16" else "fp32"
        out.append(Contender(f"optimum-intel OpenVINO export ({label})",
                             _cls_e2e(lambda texts, s, model=model: model(**feeds(texts, s)).last_hidden_state),
                             engine, label))
    return out


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def gpu_peak_gflops() -> float:
    """The GPU's practical fp16 peak: torch 8192^3 fp16 matmuls."""
    torch = require("torch")
    return _matmul_gflops(torch.randn(8192, 8192, dtype=torch.float16, device="cuda:0"), torch.cuda.synchronize)


def run_bench(bundles: list[Path], *, batches=DEFAULT_BATCHES, seqs=DEFAULT_SEQS, repeats=5, warmup=1,
              flagmodel=True, optimum=True, torch_bf16=True, optimum_intel=True, reference_device="cpu", log=print) -> tuple[list[dict], dict]:
    contenders, metas, models = [], [], []
    for b in bundles:
        c, meta, model = _bundle_contender(Path(b), log)
        contenders.append(c)
        metas.append(meta)
        models.append(model)
    sources = {m["source"]["weights_sha256"] for m in metas}
    if len(sources) != 1:
        raise BgeExportError("bench compares bundles of ONE checkpoint; these bundles come from different weights")
    if len({m["runtime"]["api"] for m in metas}) != 1 or metas[0]["runtime"]["api"] not in API_CALLS:
        raise BgeExportError(f"bench times bundles of one family with one of the APIs {sorted(API_CALLS)}; got "
                             f"{sorted({m['runtime']['api'] for m in metas})}")
    variants = {json.dumps(m["variant"], sort_keys=True) for m in metas}
    if len(variants) != 1:
        raise BgeExportError("bench compares bundles built with the same variant (cutoff layers, compression, API, "
                             f"attention, export dtype); these differ: {sorted(variants)}")
    meta = metas[0]
    family = None
    peers = {"flagmodel": flagmodel, "optimum": optimum, "torch_bf16": torch_bf16, "optimum_intel": optimum_intel}
    if any(peers.values()):
        try:
            family = family_from_manifest(meta)
        except BgeExportError as exc:
            raise BgeExportError(f"{exc}; the comparison needs the source checkpoint, or pass --no-flagmodel "
                                 "--no-optimum to time the bundles alone") from None
    with tempfile.TemporaryDirectory(prefix="bge-bench-") as workdir:
        return _run(contenders, meta, family, Path(workdir), bundles, models[0], batches, seqs, repeats, warmup,
                    peers, reference_device, log)


def _peer_contenders(peers: dict, family, api: dict, ckpt: str, workdir: Path, reference_device: str, log) -> list:
    """The peers asked for in ``peers`` that can run this API on this machine; each one skipped is logged."""
    from runtimes.cpu import has_bf16

    out = []
    if peers["flagmodel"]:
        log(f"loading FlagEmbedding {family.reference_api} "
            + ("(fp16, CUDA)" if reference_device == "cuda" else "(fp32, CPU)"))
        out.append(_reference_contender(family, reference_device))
    if peers["optimum"] and not api.get("hf_encoder"):
        log("optimum: compared with encoder bundles only in this version; skipped")
    elif peers["optimum"]:
        log("exporting the checkpoint with optimum (its default ONNX export, ORT CPU)")
        out.append(_optimum_contender(ckpt, workdir))
    if peers["torch_bf16"] and reference_device == "cpu":
        if has_bf16():
            log(f"loading FlagEmbedding {family.reference_api}'s model again, cast to bf16 (plain torch)")
            out.append(_torch_bf16_contender(family))
        else:
            log("torch bf16: this CPU has no bf16 instructions (torch would emulate them); skipped")
    if peers["optimum_intel"] and api.get("hf_encoder") and reference_device == "cpu":
        if available("optimum.intel"):
            log("exporting the checkpoint with optimum-intel (OVModelForFeatureExtraction, fp32 and bf16)")
            out += _optimum_intel_contenders(ckpt, workdir, ("f32", "bf16") if has_bf16() else ("f32",))
        else:
            log("optimum-intel is not installed here (its pins clash with optimum-onnx: install it in its own venv, "
                "benchmarks/bench_venv.sh builds one); skipped")
    return out


def _run(contenders, meta, family, workdir, bundles, model, batches, seqs, repeats, warmup, peers, reference_device,
         log):
    ckpt = meta["source"]["checkpoint"]
    api_name = meta["runtime"]["api"]
    api = API_CALLS[api_name]
    modes = list(api["modes"]) + ["engine"]
    flops_of = get_family(meta["family"]).flops
    contenders += _peer_contenders(peers, family, api, ckpt, workdir, reference_device, log)
    from runtimes.tokenizer import Tokenizer

    tok = Tokenizer(Path(bundles[0]) / meta["tokenizer"]["dir"], pad_token_id=meta["tokenizer"]["pad_token_id"],
                    padding_side=meta["tokenizer"]["padding_side"])
    from bge_export.parity import parity_texts

    words = " ".join(parity_texts()["corpus"]).split()
    n_tok = lambda text: len(tok.encode([text], 100_000)[0].ids)  # noqa: E731
    work = Workload(lambda n, length, offset=0: exact_length_texts(n_tok, words[offset * 101:] + words, n, length),
                    n_tok, model)
    gpu = reference_device == "cuda"
    if gpu:  # every contender is divided by the GPU's fp16 peak
        peak = gpu_peak_gflops()
        peaks = {c.peak: peak for c in contenders} | {"gpu-fp16": peak}
    else:
        peaks = {kind: peak_gflops(kind) for kind in sorted({c.peak for c in contenders})}
    from runtimes.cpu import cpu_flags, cpu_name

    env = {"machine": platform.machine(), "processor": cpu_name(), "cpus": os.cpu_count(),
           "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))),
           "gpu": require("torch").cuda.get_device_name() if gpu else None,
           "peaks_gflops": {k: round(v, 1) for k, v in peaks.items()},
           "peak_kinds": {"gpu-fp16": "torch fp16 8192^3 GEMM on the GPU"} if gpu
           else {k: f"{PEAKS[k]}, best of {'/'.join(map(str, PEAK_SIZES))}^3" for k in peaks},
           "gpu_fp16_peak_gflops": round(peaks["gpu-fp16"], 1) if gpu else None,
           "source": ckpt, "model": meta["model"],
           "family": meta["family"], "api": api_name, "variant": meta["variant"],
           "threads": "ONNX Runtime and torch defaults (all cores); ORT thread spinning off for every ORT contender"}
    log("measured peaks: " + ", ".join(f"{env['peak_kinds'][k]}: {v:.0f} GFLOP/s" for k, v in peaks.items())
        + ("" if gpu else " (measured again after the timings; the larger value counts)"))
    peak_of = {c.name: c.peak for c in contenders}
    variant_of = {c.name: c.variant for c in contenders}
    rows = []
    for s in seqs:
        if s > meta["profiles"]["sequence"]["max"]:
            log(f"skip seq {s}: above the model's {meta['profiles']['sequence']['max']} positions")
            continue
        for b in batches:
            workload = api["inputs"](work, b, s)
            tokens = api["tokens"](work, workload, b, s) if "tokens" in api else dict.fromkeys(modes, b * s)
            timed = {}
            for c in contenders:
                for mode in modes[:-1] if c.e2e else ():  # engine-only contenders have no public call
                    timed[(c.name, mode)] = (lambda c=c, mode=mode: c.e2e(mode, workload, b, s))
                timed[(c.name, "engine")] = c.engine(workload, b, s, work)
            samples = {k: [] for k in timed}
            keys = list(timed)
            results = {}  # the first result of every public call: the sanity check against FlagEmbedding
            for i in range(max(warmup, 1)):
                for k in keys:
                    if i < warmup or k[1] != "engine":
                        out = timed[k]()
                        if i == 0 and k[1] != "engine":
                            results[k] = out
            for r in range(repeats):
                for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate the order each round
                    # One untimed switch-in call: the previous contender's thread pool may still be spinning
                    # on the cores (ONNX Runtime and OpenMP both spin after a call), which would bill its
                    # tail to whoever runs next. Calls over a second make that tail negligible: no switch-in.
                    if not samples[k] or samples[k][-1] < 1.0:
                        timed[k]()
                    t0 = time.perf_counter()
                    timed[k]()
                    samples[k].append(time.perf_counter() - t0)
            cell = []
            for (name, mode), xs in samples.items():
                med = statistics.median(xs)
                flops = flops_of(meta["model"], b, tokens[mode] / b, variant_of[name])
                row = {"contender": name, "mode": mode, "batch": b, "seq": s, "tokens": tokens[mode],
                       "median_ms": med * 1e3, "p95_ms": _percentile(xs, 95) * 1e3,
                       "p99_ms": _percentile(xs, 99) * 1e3, "tokens_per_s": tokens[mode] / med,
                       "gflops": flops / med / 1e9, "peak": peak_of[name],
                       "peak_fraction": flops / med / 1e9 / peaks[peak_of[name]], "repeats": len(xs)}
                ref_key = next((k for k in results if k[1] == mode and k[0].startswith("FlagEmbedding")), None)
                if mode != "engine" and ref_key and ref_key[0] != name:
                    row.update(output_check(api.get("check", "vectors"), results[(name, mode)], results[ref_key]))
                cell.append(row)
            for mode in modes:
                ref = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("FlagEmbedding")), None)
                opt = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("optimum ONNX")), None)
                for r in cell:
                    if r["mode"] != mode:
                        continue
                    r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ref else None
                    r["speedup_vs_optimum"] = opt["median_ms"] / r["median_ms"] if opt else None
            rows += cell
            best = max((r for r in cell if r["mode"] == "e2e"), key=lambda r: r["tokens_per_s"])
            checks = ", ".join(f"{short_name(r['contender'])} {r['mode']} max|d| {r['check_max_abs']:.2e}"
                               for r in cell if "check_max_abs" in r)
            log(f"batch {b:>3} x {s:>3} tokens: fastest e2e {best['contender']} {best['median_ms']:.1f} ms"
                + (f"; vs FlagEmbedding: {checks}" if checks else ""))
    if not gpu:  # the peak again after the grid, when the machine may be quieter: a peak is a maximum
        for kind in peaks:
            peaks[kind] = max(peaks[kind], peak_gflops(kind))
        env["peaks_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
        for r in rows:
            r["peak_fraction"] = r["gflops"] / peaks[r["peak"]]
    return rows, env


def short_name(contender: str) -> str:
    """'bge-export ort-cpu' -> 'ort-cpu', 'optimum ONNX export (ORT CPU)' -> 'optimum ONNX export'."""
    return contender.removeprefix("bge-export ").split(" (")[0]


MODE_ORDER = ("e2e", "e2e-queries", "engine")
MODE_TITLES = {"e2e": "end to end: encode(texts) / compute_score(pairs)", "e2e-queries": "end to end: encode_queries",
               "engine": "engine only (pre-tokenized)"}


def _modes(rows: list[dict]) -> list[str]:
    present = {r["mode"] for r in rows}
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def summary_markdown(rows: list[dict]) -> str:
    """Speed-ups of each bundle over the FlagEmbedding reference and optimum per cell (median latency ratios)."""
    ours = list(dict.fromkeys(r["contender"] for r in rows if r["contender"].startswith("bge-export")))
    cells = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0]))
    modes = _modes(rows)
    refs = [("FlagEmbedding", "speedup_vs_reference")]
    if any(r.get("speedup_vs_optimum") is not None for r in rows):
        refs.append(("optimum", "speedup_vs_optimum"))
    head = ["batch x seq"] + [f"{name.split()[-1]} {mode} vs {ref}" for name in ours for mode in modes
                              for ref, _ in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, s in cells:
        vals = []
        for name in ours:
            for mode in modes:
                r = next((r for r in rows if (r["contender"], r["mode"], r["batch"], r["seq"]) == (name, mode, b, s)), {})
                for _, key in refs:
                    vals.append("-" if r.get(key) is None else f"{r[key]:.2f}")
        lines.append(f"| {b} x {s} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


PEER_COLUMNS = (("ort-cpu", "bge-export ort-cpu"), ("torch bf16", "torch bf16"),
                ("optimum-intel bf16", "optimum-intel OpenVINO export (bf16)"),
                ("optimum ONNX", "optimum ONNX export"), ("FlagEmbedding", "FlagEmbedding"))


def best_markdown(rows: list[dict]) -> str:
    """Per mode and cell: the fastest bge-export bundle, its latency ratio over ``ort-cpu`` and each peer present,
    and its fraction of its precision's peak (the issue-12 goals read off this table)."""
    present = [(label, prefix) for label, prefix in PEER_COLUMNS
               if any(r["contender"].startswith(prefix) for r in rows)]
    head = ["mode", "batch x seq", "fastest bge-export", "ms"] + [f"x {label}" for label, _ in present] + ["% of peak"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for mode in _modes(rows):
        for b, s in sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0])):
            cell = [r for r in rows if (r["mode"], r["batch"], r["seq"]) == (mode, b, s)]
            ours = [r for r in cell if r["contender"].startswith("bge-export")]
            if not ours:
                continue
            best = min(ours, key=lambda r: r["median_ms"])
            vals = []
            for _, prefix in present:
                peer = next((r for r in cell if r["contender"].startswith(prefix)), None)
                vals.append("-" if peer is None else f"{peer['median_ms'] / best['median_ms']:.2f}")
            lines.append(f"| {mode} | {b} x {s} | {short_name(best['contender'])} | {best['median_ms']:.1f} | "
                         + " | ".join(vals) + f" | {100 * best['peak_fraction']:.0f} |")
    return "\n".join(lines) + "\n"


def _check_text(r: dict) -> str:
    if "check_max_abs" not in r:
        return "-"
    extra = (f" (rel. spread {r['check_rel_spread']:.1e})" if "check_rel_spread" in r else
             f" (cos min {r['check_cosine_min']:.6f})" if "check_cosine_min" in r else "")
    return f"{r['check_max_abs']:.1e}{extra}"


UNSTABLE_P95 = 1.3  # a row whose p95 exceeds its median by more than this factor is flagged in bench.md


def markdown(rows: list[dict], env: dict) -> str:
    m = env["model"]
    shape = (f"Model: {m.get('model_type')} {m.get('num_hidden_layers')} layers, hidden {m.get('hidden_size')}"
             + (f", {m['num_attention_heads']} heads / {m['num_key_value_heads']} KV heads, FFN "
                f"{m['intermediate_size']}, {m['layers_in_graph']} layers in the graph"
                if "layers_in_graph" in m else "")
             + ".")
    if env.get("gpu"):
        machine = f"GPU: {env['gpu']}, measured fp16 GEMM peak {env['gpu_fp16_peak_gflops'] / 1000:.0f} TFLOP/s."
        peak = "% of fp16 GEMM peak"
    else:
        machine = (f"Machine: {env['processor']}, {env['cpus']} cores. Measured peaks: "
                   + "; ".join(f"{env['peak_kinds'][k]}: {v} GFLOP/s" for k, v in env["peaks_gflops"].items())
                   + ". Each row is divided by the peak of its own precision.")
        peak = "% of its precision's peak"
    lines = [f"{machine} {shape} \"(unstable)\": p95 above {UNSTABLE_P95}x the median.", "",
             f"| mode | batch x seq | contender | median ms | p95 ms | tokens/s | GFLOP/s (work done) | {peak} | x FlagEmbedding | x optimum | max abs diff vs FlagEmbedding |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    order = {mode: i for i, mode in enumerate(_modes(rows))}
    for r in sorted(rows, key=lambda r: (order[r["mode"]], r["seq"], r["batch"], -r["tokens_per_s"])):
        unstable = " (unstable)" if r["p95_ms"] > UNSTABLE_P95 * r["median_ms"] else ""
        lines.append(f"| {r['mode']} | {r['batch']} x {r['seq']} | {r['contender']} | {r['median_ms']:.1f} | "
                     f"{r['p95_ms']:.1f}{unstable} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['peak_fraction']:.0f} | {fmt(r.get('speedup_vs_reference'))} | "
                     f"{fmt(r.get('speedup_vs_optimum'))} | {_check_text(r)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """tokens/s bars per cell, one panel per mode; rows with a "group" key (several models in one file) get one
    line of panels per group."""
    if not available("matplotlib"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.get("group") for r in rows))
    ncols = max(len(_modes([r for r in rows if r.get("group") == g])) for g in groups)
    fig, axes = plt.subplots(len(groups), ncols, figsize=(7 * ncols, 5 if len(groups) == 1 else 4 * len(groups)),
                             sharey=False, squeeze=False)
    # one color per contender across all panels; with several groups the FlagEmbedding classes share one entry
    label_of = (lambda n: "FlagEmbedding (torch fp32)" if n.startswith("FlagEmbedding") else n) if len(groups) > 1 \
        else (lambda n: n)
    colors = {lab: f"C{i}" for i, lab in enumerate(dict.fromkeys(label_of(r["contender"]) for r in rows))}
    legend = {}
    for gi, group in enumerate(groups):
        grows = [r for r in rows if r.get("group") == group]
        modes = _modes(grows)
        for ax in axes[gi][len(modes):]:
            ax.axis("off")
        for ax, mode in zip(axes[gi], modes):
            sel = [r for r in grows if r["mode"] == mode]
            cells = sorted({(r["batch"], r["seq"]) for r in sel}, key=lambda c: (c[1], c[0]))
            names = list(dict.fromkeys(r["contender"] for r in sel))
            width = 0.8 / max(1, len(names))
            for j, name in enumerate(names):
                ys = [next((r["tokens_per_s"] for r in sel if r["contender"] == name and (r["batch"], r["seq"]) == c), 0)
                      for c in cells]
                label = label_of(name)
                bars = ax.bar([i + j * width for i in range(len(cells))], ys, width, label=label, color=colors[label])
                legend.setdefault(label, bars)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
            ax.set_xticklabels([f"{b}x{s}" for b, s in cells], rotation=0 if len(groups) > 1 else 45)
            ax.set_xlabel("batch x tokens")
            ax.set_ylabel("tokens/s")
            title = MODE_TITLES.get(mode, mode)
            ax.set_title(title if group is None else f"{group}: {mode}", fontsize=10 if group else None)
            ax.grid(axis="y", alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(groups) == 1 else 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_from_args(args, log=print) -> int:
    if args.quick:
        args.batch_sizes, args.seq_lens, args.repeats = "1,8", "16,128", 3
    batches = _ints(args.batch_sizes, "--batch-sizes")
    seqs = _ints(args.seq_lens, "--seq-lens")
    if args.repeats < 1 or args.warmup < 0:
        raise BgeExportError("--repeats must be >= 1 and --warmup >= 0")
    from runtimes.bundle import open_bundle

    for b in args.bundles:
        open_bundle(b, verify=False)  # clear errors before any heavy work
    rows, env = run_bench([Path(b) for b in args.bundles], batches=batches, seqs=seqs, repeats=args.repeats,
                          warmup=args.warmup, flagmodel=not args.no_flagmodel, optimum=not args.no_optimum,
                          torch_bf16=not args.no_torch_bf16, optimum_intel=not args.no_optimum_intel,
                          reference_device=args.reference_device, log=log)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BgeExportError(f"--out {out} is a file; pass a folder for bench.jsonl, bench.md and bench.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BgeExportError(f"--out {out}: cannot write there ({exc.strerror})") from None
    with open(out / "bench.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "env": env}) + "\n")
    md = ("## Speed-up (median latency ratios)\n\n" + summary_markdown(rows)
          + "\n## The fastest bundle per cell, against ort-cpu and the peers (latency ratios)\n\n" + best_markdown(rows)
          + "\n## All rows\n\n" + markdown(rows, env))
    (out / "bench.md").write_text(md)
    png = plot(rows, out / "bench.png")
    if args.json:
        print(json.dumps({"env": env, "rows": rows}, indent=2))
    else:
        print(md)
    log(f"wrote {out / 'bench.jsonl'}, {out / 'bench.md'}" + (f", {out / 'bench.png'}" if png else
                                                               " (no plot: pip install 'bge-export[dev]')"))
    return 0
