"""`bge-export bench`'s command line: its arguments, the settings they give, and the run they start."""
from __future__ import annotations

import json
from pathlib import Path

from bge_export.bench.harness import run_bench
from bge_export.bench.report import write_outputs
from bge_export.bench.settings import DEFAULT_BATCHES, DEFAULT_SEQS, BenchSettings, Peers
from bge_export.errors import BgeExportError
from bge_export.options import parse_int_list
from runtimes.bundle import open_bundle


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


def ints(text: str, what: str) -> list[int]:
    """A comma-separated list of positive integers (--batch-sizes, --seq-lens)."""
    return list(parse_int_list(text, what, example="1,8,32", error=BgeExportError))


def settings_from_args(args):
    """The BenchSettings of parsed arguments (``--quick`` applied to them first)."""
    if args.quick:
        args.batch_sizes, args.seq_lens, args.repeats = "1,8", "16,128", 3
    batches = ints(args.batch_sizes, "--batch-sizes")
    seqs = ints(args.seq_lens, "--seq-lens")
    if args.repeats < 1 or args.warmup < 0:
        raise BgeExportError("--repeats must be >= 1 and --warmup >= 0")
    return BenchSettings(batches=tuple(batches), seqs=tuple(seqs), repeats=args.repeats, warmup=args.warmup,
                         peers=Peers(flagmodel=not args.no_flagmodel, optimum=not args.no_optimum,
                                     torch_bf16=not args.no_torch_bf16, optimum_intel=not args.no_optimum_intel),
                         reference_device=args.reference_device)


def run_from_args(args, log=print) -> int:
    """Run `bge-export bench` on parsed arguments: check the bundles open, time them, write the outputs."""
    settings = settings_from_args(args)
    for b in args.bundles:
        open_bundle(b, verify=False)  # clear errors before any heavy work
    rows, env = run_bench([Path(b) for b in args.bundles], settings, log=log)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BgeExportError(f"--out {out} is a file; pass a folder for bench.jsonl, bench.md and bench.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BgeExportError(f"--out {out}: cannot write there ({exc.strerror})") from None
    md, png = write_outputs(rows, env, out)
    if args.json:
        print(json.dumps({"env": env, "rows": rows}, indent=2))
    else:
        print(md)
    log(f"wrote {out / 'bench.jsonl'}, {out / 'bench.md'}" + (f", {out / 'bench.png'}" if png else
                                                               " (no plot: pip install 'bge-export[dev]')"))
    return 0
