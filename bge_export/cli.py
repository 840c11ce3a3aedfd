"""The bge-export command. Heavy libraries are imported only inside the functions that run them (the project's
modules import none at their top), so ``bge-export --help`` works without torch, ONNX Runtime or OpenVINO."""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from bge_export import __version__
from bge_export.bench.args import add_arguments as add_bench_arguments
from bge_export.bench.args import run_from_args as run_bench_from_args
from bge_export.build.targets import TARGETS, build_options, default_cpu_target
from bge_export.compile import compile_bundle, require_parity
from bge_export.errors import InputError, UnsupportedTargetError
from bge_export.families import FAMILIES
from bge_export.families.base import variant_options
from bge_export.lint import lint_trt
from bge_export.reparity import rerun_parity
from runtimes import corpus, server
from runtimes.backends import get_backend_class
from runtimes.bundle import open_bundle
from runtimes.cpu import capabilities
from runtimes.errors import BgeError

COMMANDS = ("inspect", "parity", "bench", "serve", "embed", "families", "lint")

MAIN_DESCRIPTION = """\
Export a BAAI BGE checkpoint to an engine bundle, check it against FlagEmbedding, and write it atomically.

  bge-export --target ort-cpu                      # the embedded default: all-MiniLM-L6-v2 (real weights)
  bge-export                                       # the fastest float CPU target for this CPU (says which, why)
  bge-export --model BAAI/bge-small-en-v1.5 --target ort-cpu-int8 --out bundles/small-int8
  bge-export inspect bundles/small-int8            # what is in a bundle
  bge-export parity bundles/small-int8             # re-run parity
  bge-export bench bundles/a bundles/b             # time bundles against FlagEmbedding and optimum
  bge-export serve bundles/a bundles/b --port 8080 # HTTP: TEI, OpenAI and Cohere routes, batched across requests
  bge-export embed bundles/a --input corpus.jsonl --output emb/   # a corpus to Parquet (--ray auto: on Ray)
  bge-export --model BAAI/bge-m3 --target trt-fp16 --trt-seq-buckets 128,512,2048 --out bundles/m3-trt
  bge-export lint bundles/m3-onnx-fp16 --target trt  # what would stop or slow a TensorRT build (no TensorRT needed)
  bge-export --model BAAI/bge-reranker-v2-minicpm-layerwise --cutoff-layers 28,40 --out bundles/lw
  bge-export --model BAAI/bge-reranker-v2.5-gemma2-lightweight --cutoff-layers 28 \\
             --compress-ratio 2 --compress-layers 24,40 --out bundles/light

--model takes a checkpoint folder or a hub id that is already in the local Hugging Face cache
(nothing is downloaded). Serve the bundle with:  import runtimes; runtimes.load(BUNDLE).encode([...])
or with FlagEmbedding's class names:  from runtimes import FlagModel; FlagModel(BUNDLE).encode([...])
"""

def target_help() -> str:
    """The --help epilog: every registered target with its help line, then the commands."""
    width = max(map(len, TARGETS)) + 1
    lines = ["targets:"]
    for name, tgt in TARGETS.items():
        first, *rest = tgt.help.split("\n")
        lines.append(f"  {name:<{width}} {first}")
        lines += [f"  {'':<{width}} {line}" for line in rest]
    return "\n".join(lines) + "\n" + TARGET_HELP_TAIL


TARGET_HELP_TAIL = """GPU bundles built on a machine without CUDA are parity-checked on ONNX Runtime CPU: that checks the graph and
its precision, not the CUDA kernels; re-run `bge-export parity BUNDLE` on the GPU machine.

other commands (bge-export COMMAND --help):
  inspect   show a bundle's manifest: family, target, files, fusions, parity
  parity    re-run parity of a bundle against FlagEmbedding
  bench     time bundles against FlagEmbedding and optimum's ONNX export
  serve     serve bundles over HTTP (text-embeddings-inference, OpenAI, Cohere routes; the serve extra)
  embed     embed a corpus (JSONL, Parquet, text) into Parquet shards, in-process or on Ray (corpus / ray extras)
  lint      check a bundle's graph for what TensorRT cannot parse or runs slowly (runs without TensorRT)
  families  list the supported families and targets, and what this CPU can run fast

exit codes: 0 ok, 1 parity or graph check failed, 2 bad input, 3 internal error (a bug)"""


def _quiet_third_party() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "torch._export", "onnxscript", "transformers", "FlagEmbedding"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _err(msg: str) -> None:
    print(f"bge-export: error: {msg}", file=sys.stderr)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export", description=MAIN_DESCRIPTION, epilog=target_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="PATH_OR_ID", default=None,
                   help="checkpoint folder, or a hub id in the local HF cache (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--target", default=None, metavar="TARGET",
                   help="engine to build (default: the fastest non-int8 CPU target for this CPU: ov-cpu-bf16 where it "
                        "has bf16, else the faster fp32 one; the build says which and why; see below)")
    p.add_argument("--out", metavar="DIR", default=None, help="bundle folder (default: bundles/<model>-<target>)")
    # the families' export-time options and the targets' builder options, generated from their declarations
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in variant_options() + build_options():
        if opt.group is None:
            opt.add_to(p)
        else:
            opt.add_to(groups.setdefault(opt.group, p.add_argument_group(opt.group)))
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check against FlagEmbedding")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--version", action="version", version=f"bge-export {__version__}")
    return p


def cmd_build(argv: list[str]) -> int:
    args = main_parser().parse_args(argv)
    _quiet_third_party()
    variant = {opt.dest: opt.value(args) for opt in variant_options()}
    builder_options = {opt.dest: opt.value(args) for opt in build_options()}
    target = args.target
    if target is None:
        target, why = default_cpu_target()
        if not args.quiet:
            _log(f"no --target given: building {target} ({why})")
    result = compile_bundle(args.model, target, args.out, variant=variant,
                            parity=not args.no_parity, build_options=builder_options,
                            overwrite=args.overwrite, log=_log, quiet=args.quiet,
                            on_parity=None if args.json else lambda text: print(text, flush=True))
    if args.json:
        print(json.dumps({"bundle": str(result.bundle), "family": result.manifest.family,
                          "target": result.manifest.target, "parity": result.manifest.parity}, indent=2))
    else:
        print(f"bundle: {result.bundle}")
    require_parity(result)
    return 0


def inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export inspect", description="Show what an engine bundle holds, after "
                                "checking its files against the manifest.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--fast", action="store_true", help="check file sizes only, not sha256")
    return p


def cmd_inspect(argv: list[str]) -> int:
    args = inspect_parser().parse_args(argv)
    b = open_bundle(args.bundle, verify=not args.fast)
    d = b.manifest.data
    if args.json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return 0
    m = d["model"]
    lines = [
        f"bundle     {b.path}",
        f"family     {d['family']}  (FlagEmbedding API: {d['runtime']['api']})  variant {d['variant']}",
        f"target     {d['target']}  precision {d['precision']}  engine {d['engine']['kind']}"
        + (f" {d['engine']['providers']}" if d["engine"].get("providers") else ""),
        f"source     {d['source']['checkpoint']}  weights sha256 {d['source']['weights_sha256'][:16]}...",
        f"model      {m.get('model_type')}  layers {m.get('num_hidden_layers')}  hidden {m.get('hidden_size')}  "
        f"heads {m.get('num_attention_heads')}  max length {d['profiles']['sequence']['max']}",
        "inputs     " + ", ".join(f"{i['name']}{i['axes']}" for i in d["io"]["inputs"]),
        "outputs    " + ", ".join(f"{o['name']}{o['axes']}" for o in d["io"]["outputs"]),
        f"export     {d['build']['export']['exporter']} opset {d['build']['export']['opset']}, "
        f"max error vs torch {d['build']['export']['check_vs_torch']['max_relative_error']:.2g}",
    ]
    if d["build"].get("fusions") is not None:
        lines.append("fusions    " + (", ".join(f"{k} x{v}" for k, v in d["build"]["fusions"].items()) or "none"))
    q = d["build"].get("quantization")
    if q and q.get("method", "").startswith("nncf"):
        lines.append(f"int8       {q['method']}" + (f" ({q['what']})" if q.get("what") else "")
                     + (f", calibration {q['calibration']}, kept float: {q['kept_float']} "
                        f"({q['kept_float_nodes']} MatMuls)" if q.get("calibration") else ""))
    elif q:
        lines.append(f"int8       per_channel={q['per_channel']} reduce_range={q['reduce_range']} ops={q['op_types_to_quantize']} "
                     f"weights={q.get('weight_type', 'QInt8')} kept fp32: {q.get('kept_float_nodes', 0)} FFN "
                     f"down-projections" + (f" (built on {q['built_on']})" if q.get("built_on") else ""))
    b = d["build"]
    if b.get("fp16"):
        lines.append(f"fp16       fp32 islands {b['fp16']['fp32_ops']}, {b['fp16']['fp32_head_nodes']} head node(s) "
                     f"fp32, {b['fp16']['casts_added']} casts")
    if b.get("qdq"):
        lines.append(f"qdq int8   {b['qdq']['quantized_matmuls']} MatMuls int8, kept float {b['qdq']['kept_float']}, "
                     f"float regions {b.get('float_regions')}")
    lines += get_backend_class(d["engine"]["kind"]).describe(d["engine"], b)  # the engine's own settings
    lines.append("files      " + ", ".join(f"{k} ({v['size'] / 1e6:.1f} MB)" for k, v in d["files"].items()
                                          if v["size"] > 1e5))
    lines.append("tools      " + ", ".join(f"{k} {v}" for k, v in d["tools"].items()))
    par = d["parity"]
    if par is None:
        lines.append("parity     not run (built with --no-parity)")
    else:
        lines.append(f"parity     {'PASSED' if par['passed'] else 'FAILED'} vs {par['reference']} on {par['texts']} texts"
                     + (f", run on {par['device']}" if par.get("device") else ""))
        for c in par["checks"]:
            bound = "" if c["bound"] is None else f" (bound {c['bound']:g})"
            lines.append(f"             {c['output']:<7} {c['metric']:<17} {c['value']:.6g}{bound}"
                         f"{'' if c['passed'] else '  FAIL'}")
    print("\n".join(lines))
    return 0


def parity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export parity", description="Re-run parity of a bundle against "
                                "FlagEmbedding on its source checkpoint; without the checkpoint or FlagEmbedding, "
                                "check against the reference sample stored in the bundle.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def cmd_parity(argv: list[str]) -> int:
    args = parity_parser().parse_args(argv)
    _quiet_third_party()
    ok, text, report = rerun_parity(args.bundle, log=_log)
    print(json.dumps(report, indent=2) if args.json else text)
    return 0 if ok else 1


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export bench", description="Time bundles end to end (encode) and "
                                "engine-only against FlagEmbedding (fp32, CPU) and optimum's ONNX export of the "
                                "same checkpoint, interleaved in one process. Writes JSON rows, a markdown table "
                                "and a PNG plot.")
    add_bench_arguments(p)
    return p


def cmd_bench(argv: list[str]) -> int:
    args = bench_parser().parse_args(argv)
    _quiet_third_party()
    return run_bench_from_args(args, log=_log)


def families_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export families", description="List supported families and targets.")
    p.add_argument("--json", action="store_true")
    return p


def cmd_families(argv: list[str]) -> int:
    args = families_parser().parse_args(argv)
    rows = [{"family": f.name, "reference": f.reference_api, "description": f.description,
             "targets": list(f.targets), "checkpoints": list(f.checkpoints)} for f in FAMILIES.values()]
    cpu = capabilities()
    cpu["default_target"], cpu["default_reason"] = default_cpu_target()
    if args.json:
        print(json.dumps({"families": rows, "targets": {k: v.description for k, v in TARGETS.items()}, "cpu": cpu},
                         indent=2))
        return 0
    width = max(len(r["family"]) for r in rows)
    ref_width = max(len(r["reference"]) for r in rows)
    for r in rows:
        print(f"{r['family']:<{width}}  {r['reference']:<{ref_width}}  targets: {', '.join(r['targets'])}\n"
              f"{'':<{width}}  {r['description']}")
    target_width = max(map(len, TARGETS))
    print("\ntargets:\n" + "\n".join(f"  {k:<{target_width}}  {v.description}" for k, v in TARGETS.items()))
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    print(f"\nthis CPU: {cpu['cpu']}\n  AVX2 {yes(cpu['avx2'])}, AVX-512 {yes(cpu['avx512'])}, int8 VNNI "
          f"{yes(cpu['vnni'])}, bf16 (AVX512-BF16 / AMX) {yes(cpu['bf16'])}, AMX {yes(cpu['amx'])}"
          f"\n  matrix flags: {' '.join(cpu['matrix_flags']) or 'none'}"
          f"\n  default target here: {cpu['default_target']} ({cpu['default_reason']})")
    return 0


def lint_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export lint", description="Check a bundle's ONNX graph (or an .onnx file) "
                                "for what would stop or slow a TensorRT build: operators the ONNX-TensorRT parser "
                                "does not support, ONNX Runtime contrib ops, data-dependent shapes, int64 compute, "
                                "asymmetric Q/DQ. Runs without TensorRT. Exit code 1 when a problem would stop "
                                "the build.")
    p.add_argument("bundle", metavar="BUNDLE_OR_ONNX")
    p.add_argument("--target", choices=("trt",), default="trt", help="the engine to lint for (default: trt)")
    p.add_argument("--trt-version", default="10.13", help="the TensorRT version to check against (default 10.13)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def cmd_lint(argv: list[str]) -> int:
    args = lint_parser().parse_args(argv)
    path = Path(args.bundle)
    if path.is_dir():
        engine = open_bundle(path, verify=False).manifest.engine
        backend = get_backend_class(engine["kind"])
        graph = backend.onnx_graph(engine)
        if graph is None:
            raise UnsupportedTargetError(f"{path} holds {backend.engine_format}, not an ONNX graph; lint the ONNX "
                                         "graph a TensorRT engine would be built from (a bundle of --target onnx, "
                                         "onnx-fp16 or onnx-int8 of the same checkpoint)")
        path = path / graph
    report = lint_trt(path, trt_version=args.trt_version)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format_text())
    return 0 if report.ok else 1


def serve_parser() -> argparse.ArgumentParser:
    return server.build_parser()


def embed_parser() -> argparse.ArgumentParser:
    return corpus.build_parser()


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the command, by subcommand ("build" is ``bge-export`` itself: ``--model ... --target ...``),
    as the commands parse with them: what a CLI reference is generated from."""
    return {"build": main_parser(), "inspect": inspect_parser(), "parity": parity_parser(), "bench": bench_parser(),
            "families": families_parser(), "lint": lint_parser(), "serve": serve_parser(), "embed": embed_parser()}


def cmd_serve(argv: list[str]) -> int:
    return server.main(argv)


def cmd_embed(argv: list[str]) -> int:
    return corpus.main(argv)


def raise_unknown_command(word: str, commands) -> None:
    close = difflib.get_close_matches(word, list(commands), n=1, cutoff=0.6)
    raise InputError(f"unknown command {word!r}" + (f"; did you mean {close[0]!r}?" if close else ".")
                     + f" Commands: {', '.join(commands)}; a build takes options only "
                     "(bge-export --model PATH --target TARGET); see bge-export --help")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {"inspect": cmd_inspect, "parity": cmd_parity, "bench": cmd_bench, "serve": cmd_serve,
                "embed": cmd_embed, "families": cmd_families, "lint": cmd_lint}
    handler = handlers.get(argv[0]) if argv else None
    try:
        if handler is None and argv and not argv[0].startswith("-"):  # the build takes options only
            raise_unknown_command(argv[0], handlers)
        return handler(argv[1:]) if handler else cmd_build(argv)
    except BgeError as exc:
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted; nothing was written")
        return 130
    except Exception:  # a bug in bge-export (or a library): show everything, with its own exit code
        traceback.print_exc()
        _err("internal error (the traceback above is a bug in bge-export; please report it)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
