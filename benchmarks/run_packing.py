"""Does unpadded ("packed", varlen) execution pay on a CPU? The real all-MiniLM-L6-v2 in plain torch, one
implementation of BERT's layer run three ways on the same queues of real mixed-length texts:

* ``padded, arrival order``: the whole queue in one padded batch (what a token budget cut in arrival order does);
* ``padded, length-aware``: the queue cut by runtimes.batcher.Padding (the server's rule), each batch padded;
* ``packed``: the whole queue as one [total_tokens, hidden] tensor through the dense layers (Q/K/V, output and
  feed-forward projections, LayerNorms), attention run per sequence on its own tokens (what text-embeddings-
  inference's flash-attention backends do on a GPU with cu_seqlens).

Same weights, same ops (torch's scaled_dot_product_attention, Linear, LayerNorm, GELU), so the ratios isolate
padding against packing. It also checks whether ONNX Runtime's CPU provider runs its packed attention ops
(com.microsoft PackedAttention / PackedMultiHeadAttention), which a packed ONNX graph would need. The outputs are checked equal (mean-pooled vectors, max abs difference). Each queue holds
32 one-text requests (a query or a passage with equal odds, benchmarks/traffic.py 'single'), as 32 clients leave
in the server's queue. Writes packing.json and packing.md to --out.

    .venv/bin/python -m benchmarks.run_packing [--queues 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def layers_of(model):
    """The BERT weights as plain tensors: embeddings and, per layer, its projections and norms."""
    emb = model.embeddings
    out = {"word": emb.word_embeddings.weight, "pos": emb.position_embeddings.weight,
           "type": emb.token_type_embeddings.weight[0], "ln": emb.LayerNorm, "layers": []}
    for layer in model.encoder.layer:
        a = layer.attention
        out["layers"].append({"q": a.self.query, "k": a.self.key, "v": a.self.value, "o": a.output.dense,
                              "ln1": a.output.LayerNorm, "up": layer.intermediate.dense, "down": layer.output.dense,
                              "ln2": layer.output.LayerNorm})
    out["heads"] = model.config.num_attention_heads
    return out


def padded_forward(w, ids_list):
    """One padded batch: [B, L, H] through every layer, attention masked; mean-pooled vectors."""
    import torch
    import torch.nn.functional as F

    lengths = [len(x) for x in ids_list]
    B, L = len(ids_list), max(lengths)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for i, x in enumerate(ids_list):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = True
    x = w["ln"](w["word"][ids] + w["pos"][:L] + w["type"])
    h = w["heads"]
    d = x.shape[-1] // h
    attn_mask = mask[:, None, None, :]
    for lw in w["layers"]:
        q, k, v = (lw[n](x).view(B, L, h, d).transpose(1, 2) for n in ("q", "k", "v"))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(B, L, -1)
        x = lw["ln1"](lw["o"](ctx) + x)
        x = lw["ln2"](lw["down"](F.gelu(lw["up"](x))) + x)
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


def packed_forward(w, ids_list):
    """The queue packed: [T, H] through the dense layers, attention per sequence; mean-pooled vectors."""
    import torch
    import torch.nn.functional as F

    lengths = [len(x) for x in ids_list]
    ids = torch.tensor([t for x in ids_list for t in x])
    pos = torch.cat([torch.arange(n) for n in lengths])
    x = w["ln"](w["word"][ids] + w["pos"][pos] + w["type"])
    h = w["heads"]
    d = x.shape[-1] // h
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    for lw in w["layers"]:
        q, k, v = (lw[n](x).view(-1, h, d) for n in ("q", "k", "v"))
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            qi, ki, vi = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
            parts.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1).reshape(b - a, -1))
        ctx = torch.cat(parts)
        x = lw["ln1"](lw["o"](ctx) + x)
        x = lw["ln2"](lw["down"](F.gelu(lw["up"](x))) + x)
    return torch.stack([x[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])


def ort_packed_attention_on_cpu() -> dict[str, str]:
    """Whether ONNX Runtime's CPU provider runs its packed (padding-free) attention ops: a one-node graph each."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    hidden, out = 8, {}
    cases = {"PackedAttention": [("x", [None, hidden]), ("w", [hidden, 3 * hidden]), ("b", [3 * hidden])],
             "PackedMultiHeadAttention": [("q", [None, hidden]), ("k", [None, hidden]), ("v", [None, hidden])]}
    for op, specs in cases.items():
        names = [n for n, _ in specs] + ([""] if op == "PackedMultiHeadAttention" else []) + ["token_offset", "cu"]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in specs]
        inputs += [helper.make_tensor_value_info("token_offset", TensorProto.INT32, [None, None]),
                   helper.make_tensor_value_info("cu", TensorProto.INT32, [None])]
        graph = helper.make_graph([helper.make_node(op, names, ["y"], domain="com.microsoft", num_heads=2)], "g",
                                  inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, hidden])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            out[op] = "runs on CPU"
        except Exception as exc:  # NOT_IMPLEMENTED: no CPU kernel
            out[op] = str(exc).split(":", 2)[-1].strip()[:160]
    out["onnxruntime"] = ort.__version__
    return out


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queues", type=int, default=20, help="queues of 32 requests to time (default 20)")
    p.add_argument("--size", type=int, default=32, help="requests per queue (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over all queues, medians kept (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/packing-minilm-<cpu>)")
    args = p.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertModel

    from benchmarks import traffic as tr
    from benchmarks.run_cpu_targets import cpu_kind
    from bge_export.checkpoint import embedded_default_path
    from runtimes.batcher import Padding
    from runtimes.cpu import capabilities

    torch.set_num_threads(args.threads)
    path = embedded_default_path()
    model = BertModel.from_pretrained(str(path), attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    w = layers_of(model)
    count = tr.counter(str(path / "tokenizer.json"), 512)
    reqs = tr.requests(args.queues * args.size, count, shape="single", seed=1)
    queues = [[tok(r.texts[0], truncation=True, max_length=512)["input_ids"] for r in reqs[i:i + args.size]]
              for i in range(0, len(reqs), args.size)]
    rule = Padding()

    def length_aware(q):
        order = sorted(range(len(q)), key=lambda i: -len(q[i]))
        out, start = [], 0
        for n in rule.cut([len(q[i]) for i in order]):
            out.append(padded_forward(w, [q[i] for i in order[start:start + n]]))
            start += n
        return out

    ways = {"padded, arrival order": lambda q: padded_forward(w, q), "padded, length-aware": length_aware,
            "packed": lambda q: packed_forward(w, q)}
    with torch.inference_mode():
        diffs = [float((padded_forward(w, q) - packed_forward(w, q)).abs().max()) for q in queues[:3]]
        for f in ways.values():  # warm-up
            f(queues[0])
        times = {k: [] for k in ways}
        for _ in range(args.repeats):
            for name, f in ways.items():
                start = time.perf_counter()
                for q in queues:
                    f(q)
                times[name].append(time.perf_counter() - start)
    real = sum(len(x) for q in queues for x in q)
    arrival = sum(len(q) * max(len(x) for x in q) for q in queues)
    aware = 0
    for q in queues:
        ls = sorted((len(x) for x in q), reverse=True)
        start = 0
        for n in rule.cut(ls):
            aware += n * ls[start]
            start += n
    eff = {"padded, arrival order": real / arrival, "padded, length-aware": real / aware, "packed": 1.0}
    rows = []
    base = float(np.median(times["padded, arrival order"]))
    for name in ways:
        t = float(np.median(times[name]))
        rows.append({"way": name, "seconds": round(t, 3), "tokens_per_s": round(real / t, 1),
                     "padding_efficiency": round(eff[name], 3), "speedup_vs_arrival_order": round(base / t, 3),
                     "runs": [round(x, 3) for x in times[name]]})
    cpu = capabilities()["cpu"]
    ort_check = ort_packed_attention_on_cpu()
    meta = {"cpu": cpu, "torch": torch.__version__, "threads": args.threads, "queues": len(queues),
            "requests_per_queue": args.size, "real_tokens": real, "max_abs_diff_padded_vs_packed": max(diffs),
            "onnxruntime_cpu_packed_attention": ort_check}
    out = Path(args.out or HERE / "results" / f"packing-minilm-{cpu_kind()}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "packing.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"CPU: {cpu}; torch {torch.__version__}, {args.threads} threads; {len(queues)} queues of {args.size} "
             f"one-text requests ({real} real tokens); packed vs padded max abs difference {max(diffs):.1e}", "",
             "| execution | padding efficiency | tokens/s | vs arrival order |", "|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['padding_efficiency']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['speedup_vs_arrival_order']:.2f}x |" for r in rows]
    lines += ["", f"ONNX Runtime {ort_check.pop('onnxruntime')} on CPU: "
              + "; ".join(f"{op}: {why}" for op, why in ort_check.items())]
    (out / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
