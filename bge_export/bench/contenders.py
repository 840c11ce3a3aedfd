"""The contenders a bench run times: each bundle, and the peers that can run its recipe here (FlagEmbedding's
reference, optimum's ONNX export, the reference's model cast to bf16, optimum-intel's OpenVINO export)."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bge_export.bench.peaks import contender_peak
from bge_export.bench.recipe import BenchRecipe, Workload
from bge_export.parity_run import quiet_stderr
from runtimes._optional import available, require
from runtimes.backends.ort import session_options
from runtimes.backends import get_backend_class
from runtimes.cpu import has_bf16
from runtimes.loader import load


@dataclass
class Contender:
    name: str
    e2e: Callable[[str, object, int, int], object] | None  # (mode, inputs, batch, seq) -> the public call's result
    engine: Callable[[object, int, int, Workload], Callable[[], object]]  # prepares inputs, returns the timed call
    peak: str = "fp32"  # the PEAKS kind its GFLOP/s are divided by (the precision its matmuls run in)
    variant: dict | None = None  # a bundle's variant, where it changes the work done (Family.flops)


def bundle_contender(path: Path, m, recipe: BenchRecipe | None) -> tuple[Contender, object]:
    """A bundle (``m``: its opened manifest), loaded with the recipe's options and its backend's options for timing
    in turns (ONNX Runtime on CPU: thread spinning off); returns the contender and the runtime model."""
    backend = get_backend_class(m.engine["kind"]).benchmark_options(m.engine)
    model = load(path, backend_options=backend, **(recipe.options if recipe else {}))

    def engine(x, b, s, w):
        feeds = recipe.engine_feeds(model, x, s)
        return lambda: model.backend.infer(feeds)

    def e2e(mode, x, b, s):
        return recipe.e2e[mode](model, x, b, s)

    peak = contender_peak(m.data)
    name = f"bge-export {m.target}" + ("-static" if peak == "int8-ov" else "")  # --ov-int8 static beside weights
    return Contender(name, e2e, engine, peak, m.data["variant"]), model


def reference_contender(family, recipe: BenchRecipe, device: str = "cpu") -> Contender:
    """FlagEmbedding's own object: the parity reference (fp32 on CPU), or PyTorch fp16 eager on the GPU, with the
    bundle's variant (cutoff layers, compression) and the recipe's options."""
    cuda = device == "cuda"
    ref = family.reference(**recipe.options, **({"use_fp16": True, "devices": "cuda:0"} if cuda else {}))

    def e2e(mode, x, b, s):
        with quiet_stderr():  # FlagEmbedding's tqdm bars
            return recipe.e2e[mode](ref, x, b, s)

    return Contender(f"FlagEmbedding {family.reference_api} (torch {'fp16 CUDA' if cuda else 'fp32'})", e2e,
                     reference_engine(ref, recipe, cuda), "gpu-fp16" if cuda else "fp32")


def reference_tensors(recipe: BenchRecipe, ref, x, s, w: Workload) -> dict:
    """The pre-tokenized tensors a FlagEmbedding object's bare forward runs on (BenchRecipe.ref_tensors)."""
    if recipe.ref_tensors is not None:
        return recipe.ref_tensors(ref, x, s, w)
    torch = require("torch")
    feeds = recipe.engine_feeds(w.model, x, s)
    enc = {k: torch.from_numpy(feeds[k]) for k in recipe.ref_feeds}
    enc.update({k: feeds[k].tolist() for k in recipe.ref_list_feeds})
    return enc


def reference_engine(ref, recipe: BenchRecipe, cuda: bool = False):
    """The engine-only call of a FlagEmbedding object's model: its pre-tokenized tensors and bare forward."""
    torch = require("torch")

    def engine(x, b, s, w):
        enc = reference_tensors(recipe, ref, x, s, w)
        ref.model.eval()
        moved = not cuda

        def call():
            nonlocal enc, moved
            if not moved:  # FlagEmbedding moves (and halves) its model in its first public call, the warm-up
                device = next(ref.model.parameters()).device
                enc = {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()}
                moved = True
            with torch.no_grad():
                out = recipe.ref_forward(ref, enc)
            if cuda:
                torch.cuda.synchronize()
            return out
        return call

    return engine


def cls_e2e(hidden):
    """encode(texts) of a plain Hugging Face encoder export: ``hidden(texts, seq)`` -> last hidden state per batch,
    then the CLS row, L2-normalised (FlagModel's default pooling)."""
    def e2e(mode, texts, b, s):
        outs = []
        for i in range(0, len(texts), b):
            h = np.asarray(hidden(texts[i:i + b], s))[:, 0]
            outs.append(h / np.linalg.norm(h, axis=-1, keepdims=True))
        return np.concatenate(outs)

    return e2e


def optimum_contender(ckpt_path: str, workdir: Path) -> Contender:
    ort_mod = require("optimum.onnxruntime")
    transformers = require("transformers")
    ort = require("onnxruntime")
    exported = ort_mod.ORTModelForFeatureExtraction.from_pretrained(ckpt_path, export=True)
    exported.save_pretrained(str(workdir / "optimum"))
    del exported  # the export's torch model and its own session: only the saved graph is timed
    gc.collect()
    # optimum's exported graph, run with exactly the session settings our bundles get in this benchmark

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

    return Contender("optimum ONNX export (ORT CPU)", cls_e2e(lambda texts, s: session.run(None, feeds(texts, s))[0]),
                     engine)


def torch_bf16_contender(family, recipe: BenchRecipe) -> Contender:
    """FlagEmbedding's own torch model cast to bf16: what a user gets from plain torch on a bf16 CPU (FlagEmbedding
    itself cannot: on CPU its encode calls ``model.float()``). Engine only: the reference's pre-tokenized call;
    end to end (recipes marked hf_encoder): the reference's tokenizer, the bf16 forward, its pooling and
    normalisation."""
    torch = require("torch")
    ref = family.reference(**recipe.options)
    ref.model.to(torch.bfloat16).eval()
    gc.collect()  # the fp32 weights the cast replaced

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

    return Contender("torch bf16 (FlagEmbedding's model cast to bf16)", e2e if recipe.hf_encoder else None,
                     reference_engine(ref, recipe), "bf16")


def optimum_intel_contenders(ckpt_path: str, workdir: Path, precisions=("f32", "bf16")) -> list[Contender]:
    """optimum-intel's OpenVINO export (``OVModelForFeatureExtraction``, its defaults), compiled at each inference
    precision. OpenVINO's CPU default is bf16 where the CPU has it, so fp32 is asked for explicitly."""
    intel = require("optimum.intel")
    transformers = require("transformers")
    folder = workdir / "optimum-intel"
    # compile=False: the export is only saved; each precision below compiles its own copy
    exported = intel.OVModelForFeatureExtraction.from_pretrained(ckpt_path, export=True, compile=False)
    exported.save_pretrained(str(folder))
    del exported
    gc.collect()
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
                             cls_e2e(lambda texts, s, model=model: model(**feeds(texts, s)).last_hidden_state),
                             engine, label))
    return out


def peer_contenders(peers, family, recipe: BenchRecipe, ckpt: str, workdir: Path, reference_device: str,
                    log) -> list[Contender]:
    """The peers asked for in ``peers`` (settings.Peers) that can run this recipe on this machine; each one skipped
    is logged."""
    out = []
    if peers.flagmodel:
        log(f"loading FlagEmbedding {family.reference_api} "
            + ("(fp16, CUDA)" if reference_device == "cuda" else "(fp32, CPU)"))
        out.append(reference_contender(family, recipe, reference_device))
    if peers.optimum and not recipe.hf_encoder:
        log("optimum: compared with encoder bundles only in this version; skipped")
    elif peers.optimum:
        log("exporting the checkpoint with optimum (its default ONNX export, ORT CPU)")
        out.append(optimum_contender(ckpt, workdir))
    if peers.torch_bf16 and reference_device == "cpu":
        if has_bf16():
            log(f"loading FlagEmbedding {family.reference_api}'s model again, cast to bf16 (plain torch)")
            out.append(torch_bf16_contender(family, recipe))
        else:
            log("torch bf16: this CPU has no bf16 instructions (torch would emulate them); skipped")
    if peers.optimum_intel and recipe.hf_encoder and reference_device == "cpu":
        if available("optimum.intel"):
            log("exporting the checkpoint with optimum-intel (OVModelForFeatureExtraction, fp32 and bf16)")
            out += optimum_intel_contenders(ckpt, workdir, ("f32", "bf16") if has_bf16() else ("f32",))
        else:
            log("optimum-intel is not installed here (its pins clash with optimum-onnx: install it in its own venv, "
                "benchmarks/bench_venv.sh builds one); skipped")
    return out
