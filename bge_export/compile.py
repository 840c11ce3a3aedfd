"""The main job: checkpoint -> family -> ONNX -> engine -> bundle (atomically) -> parity."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bge_export import __version__, parity, parity_run
from bge_export.build.settings import BuildSettings
from bge_export.build.targets import Target, check_build_options, get_target, target_precision
from bge_export.checkpoint import Checkpoint, load_tokenizer, resolve_checkpoint
from bge_export.errors import InternalError, OutputError, ParityError, UnsupportedFamilyError, UnsupportedTargetError
from bge_export.export.onnx import export_onnx
from bge_export.families import recognise
from bge_export.families.base import Family, variant_options
from bge_export.parity_run import unrunnable
from runtimes._optional import require
from runtimes.backends import get_backend_class
from runtimes.errors import BgeError
from runtimes.manifest import Manifest, describe_files

GOLDEN = "reference_sample.json"
TOKENIZER_DIR = "tokenizer"


class Progress:
    """Step-numbered progress lines on stderr-like ``write`` with elapsed times."""

    def __init__(self, total: int, write=print, quiet: bool = False):
        self.total, self.n, self.write, self.quiet = total, 0, write, quiet
        self.t0 = time.perf_counter()

    def step(self, msg: str) -> None:
        self.n += 1
        if not self.quiet:
            self.write(f"[{self.n}/{self.total}] {msg}")

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.write(f"      {msg}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def default_out_dir(ckpt: Checkpoint, target: str) -> Path:
    return Path("bundles") / f"{ckpt.name}-{target}"


def _is_bundle(folder: Path) -> bool:
    """Only a folder whose manifest reads and validates as a bundle manifest may be replaced."""
    try:
        Manifest.read(folder)
        return True
    except BgeError:
        return False


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """The bundle's final path; refuses to clobber anything that is not an old bundle, and unwritable places."""
    out = Path(out).expanduser().resolve()
    if out == Path(out.anchor) or Path.cwd().resolve().is_relative_to(out):
        raise OutputError(f"--out {out} is the current folder or one of its parents; pass a new folder for the bundle")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {out} is an existing file; pass a folder path for the bundle")
        if any(out.iterdir()):
            if not _is_bundle(out):
                raise OutputError(f"--out {out} is a non-empty folder that is not a bundle; pass a new or empty folder")
            if not overwrite:
                raise OutputError(f"--out {out} already holds a bundle; pass --overwrite to replace it, or another --out")
    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"--out {out}: {probe} is a file, not a folder; pass an --out inside a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: cannot write in {probe} (permission denied); pass an --out you can write to")
    return out


@dataclass
class CompileResult:
    bundle: Path
    manifest: Manifest
    parity_ok: bool | None
    parity_text: str


def prepare(model, target: str, build_options: dict | None = None, **variant) -> tuple[Family, Target]:
    """The family object (with its export-time variant: pooling, cutoff layers, export dtype, ...) and the target.
    Options left at None take the family's defaults. Families with their own half-precision export build
    half-precision targets from it (their implementation keeps norms, RoPE and softmax in fp32)."""
    ckpt = resolve_checkpoint(model)
    family_cls = recognise(ckpt)
    target_obj = get_target(target)
    options = {k: v for k, v in variant.items() if v is not None}
    declared = {o.dest for o in family_cls.options}
    foreign = sorted(k for k in options if k not in declared)
    if foreign:
        flag = {o.dest: o.flag for o in variant_options()}
        takes = ", ".join(o.flag for o in family_cls.options) or "no export-time options"
        raise UnsupportedFamilyError(
            f"{ckpt.path} is a {family_cls.name} checkpoint; the {family_cls.name} family has no option(s) {foreign} "
            f"({', '.join(flag.get(k, k) for k in foreign)}); it takes {takes}")
    family = family_cls(ckpt, **options)
    get_target(target, family)  # Target.supports: refused with the target's reason
    dtype = family.export_dtype()
    precision = target_precision(target_obj, family.half_dtype())
    if target_obj.from_fp32_export and dtype != "fp32":
        raise UnsupportedTargetError(f"--target {target} converts the fp32 export and runs it at {precision} itself; "
                                     f"drop --export-dtype {dtype}")
    if family.half_export and precision in ("fp16", "bf16") and dtype != precision and not target_obj.from_fp32_export:
        if "export_dtype" in options:
            raise UnsupportedTargetError(f"--target {target} runs this model in {precision}; drop --export-dtype "
                                         f"{dtype} (the graph is exported in {precision} for it)")
        family = family_cls(ckpt, **{**options, "export_dtype": precision})
        dtype = precision
    check_build_options(target_obj, build_options or {})
    if dtype != "fp32" and target_obj.precision == "int8":
        raise UnsupportedTargetError(f"--target {target} quantizes an fp32 graph; drop --export-dtype {dtype} "
                                     "(or build --target onnx / ort-cpu in that dtype)")
    return family, target_obj


def compile_bundle(
    model=None, target: str = "ort-cpu", out: str | Path | None = None, *, pooling: str | None = None,
    variant: dict | None = None,
    parity: bool = True, overwrite: bool = False, exported=None, log=print, quiet: bool = False,
    gate_retrieval: bool = True, build_options: dict | None = None, on_parity=None,
) -> CompileResult:
    """Build one bundle. ``exported`` reuses an ExportResult of the same checkpoint (tests build several targets);
    ``build_options`` go to the target's builder (TensorRT: profiles, timing cache, optimization level);
    ``gate_retrieval=False`` reports retrieval statistics without gating them (random-weight test checkpoints)."""
    prog = Progress(6 if parity else 5, write=log, quiet=quiet)
    build_options = {k: v for k, v in (build_options or {}).items() if v is not None}
    variant = {**(variant or {}), **({"pooling": pooling} if pooling is not None else {})}
    family, tgt = prepare(model, target, build_options, **variant)
    ckpt = family.ckpt
    out = check_out_dir(Path(out) if out else default_out_dir(ckpt, target), overwrite)
    settings = BuildSettings.of(family, tgt, build_options)
    precision = settings.precision
    info = family.model_info()
    prog.step(f"checkpoint {ckpt.path} -> family '{family.name}' "
              f"({info['model_type']}, {info['num_hidden_layers']} layers, hidden {info['hidden_size']}), "
              f"variant {family.variant}")
    for dep in ("torch", "transformers", "onnx", "onnxscript"):
        require(dep)
    tgt.check_can_build(family, build_options)  # before the export: the target's hardware and libraries
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write there ({exc.strerror}); pass an --out you can write to") from None
    try:
        if exported is not None and exported.dtype != family.export_dtype():
            exported = None  # the target needs an export in another dtype
        if exported is None:
            prog.step("exporting to ONNX (dynamo, dynamic batch and sequence axes)")
            exported = _export(family, tmp / "_export", prog)
        else:
            prog.step(f"reusing the ONNX export {exported.path}")
        prog.step(f"building target {tgt.name}: {tgt.description}")
        built = tgt.build_fn()(family, exported, tmp, prog.info, **build_options)
        if (tmp / "_export").exists():
            shutil.rmtree(tmp / "_export")
        prog.step("writing the bundle (manifest, tokenizer, model)")
        tok, tok_files = _save_tokenizer(ckpt, tmp / TOKENIZER_DIR)
        fields = _manifest_fields(family, tgt, exported, built, tok, settings)
        _check_device(tgt, fields["engine"])
        fields["files"] = describe_files(tmp, built.files + tok_files)
        manifest = Manifest.build(fields)
        manifest.write(tmp)
        parity_ok, parity_text = None, "parity skipped (--no-parity)"
        skip = parity and _unrunnable(precision, manifest)
        if skip:
            parity, parity_text = False, f"parity skipped: {skip}"
        if parity:
            prog.step(f"parity against FlagEmbedding {family.reference_api} (fp32, CPU)")
            manifest, parity_ok, parity_text = _run_parity(family, tgt, precision, tmp, manifest, prog.info,
                                                           gate_retrieval)
        if parity_ok is False and out.exists() and any(out.iterdir()):
            # never replace a working bundle with one that failed parity: put the new one beside it
            out = out.with_name(out.name + ".parity-failed")
            if out.exists() and not _is_bundle(out):
                raise OutputError(f"{out} exists and is not a bundle; move it away and rebuild")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if on_parity is not None:  # the report before the last progress line (the CLI prints it on stdout)
        on_parity(parity_text)
    prog.step(f"bundle written to {out} in {prog.elapsed:.0f}s")
    return CompileResult(out, manifest, parity_ok, parity_text)


def _export(family, workdir: Path, prog: Progress):
    return export_onnx(family, workdir, log=prog.info)


def _save_tokenizer(ckpt: Checkpoint, folder: Path):
    tok = load_tokenizer(ckpt)
    if not tok.is_fast:
        raise OutputError(f"{ckpt.path}: the tokenizer has no fast (tokenizers) version; the runtime needs tokenizer.json")
    tok.save_pretrained(str(folder))
    names = sorted(str(p.relative_to(folder.parent)) for p in folder.rglob("*") if p.is_file())
    if f"{TOKENIZER_DIR}/tokenizer.json" not in names:
        raise OutputError(f"{ckpt.path}: saving the tokenizer did not produce tokenizer.json")
    return tok, names


def _manifest_fields(family: Family, tgt: Target, exported, built, tok, settings: BuildSettings) -> dict:
    info = family.model_info()
    sizes = family.axis_sizes(info)
    return {
        "bge_export_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "family": family.name,
        "variant": family.variant,
        "target": tgt.name,
        "precision": settings.precision,
        "engine": {"kind": tgt.engine_kind, "file": "model.onnx", "providers": list(tgt.providers), **built.engine},
        "source": {"checkpoint": str(family.ckpt.path), "name": family.ckpt.name,
                   "weights_sha256": settings.weights_sha256},
        "model": info,
        "io": {"inputs": [s.to_json(sizes) for s in family.inputs()],
               "outputs": [s.to_json(sizes) for s in family.outputs()]},
        "profiles": {"batch": {"min": 1, "max": None}, "sequence": {"min": 1, "max": family.max_sequence_length()}},
        "tokenizer": {"dir": TOKENIZER_DIR, "pad_token_id": int(tok.pad_token_id), "padding_side": tok.padding_side,
                      "truncation_side": tok.truncation_side},
        "runtime": {"api": family.reference_api, "defaults": family.runtime_defaults()},
        "build": {"key": settings.key(), "settings": settings.to_json(),
                  "export": {"opset": 18, "exporter": "torch.onnx dynamo", "check_vs_torch": exported.check,
                             "external_data": exported.external_data, "seconds": round(exported.seconds, 2)},
                  **built.info},
        "tools": dict(settings.tools),
        "files": {},
        "parity": None,
    }


def _check_device(tgt: Target, engine: dict) -> None:
    """The device a target declares (its group, its tests) is where its backend runs the engine its builder wrote."""
    on_gpu = get_backend_class(tgt.engine_kind).on_gpu(engine)
    if on_gpu != (tgt.device == "gpu"):
        raise InternalError(f"target {tgt.name} declares device {tgt.device!r}, but its backend runs the engine its "
                            f"builder wrote ({engine}) on {'a GPU' if on_gpu else 'the CPU'}")


def _unrunnable(precision: str, manifest: Manifest) -> str | None:
    return unrunnable(precision, manifest.engine)


def _run_parity(family, tgt, precision: str, tmp: Path, manifest: Manifest, log,
                gate_retrieval: bool) -> tuple[Manifest, bool, str]:
    require("FlagEmbedding")
    checks, golden = family.run_parity(tmp, precision, parity_run.parity_texts(), log=log,
                                       gate_retrieval=gate_retrieval)
    device = parity_run.parity_device(manifest.engine).name
    ok, text = parity.report(checks, f"{family.name} / {tgt.name} vs FlagEmbedding {family.reference_api} (on {device})")
    sample = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in golden.items() if k != "n_texts"}
    (tmp / GOLDEN).write_text(json.dumps({**sample, "precision": precision}, ensure_ascii=False), encoding="utf-8")
    files = dict(manifest.data["files"])
    files.update(describe_files(tmp, [GOLDEN]))
    report = parity.report_json(checks, f"FlagEmbedding {family.reference_api} fp32 CPU", golden["n_texts"],
                                gate_retrieval, device=device)
    manifest = manifest.with_updates(files=files, parity=report)
    manifest.write(tmp)
    return manifest, ok, text


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an old bundle (checked by check_out_dir) is replaced only after the
    new one is complete, and restored if the swap fails."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700 folders: give the bundle normal permissions
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def require_parity(result: CompileResult) -> None:
    if result.parity_ok is False:
        raise ParityError(f"parity failed; the bundle was written to {result.bundle} with the failing report in "
                          "its manifest (an existing bundle at --out is kept). Try a more accurate target "
                          "(ort-cpu instead of ort-cpu-int8), or pass --no-parity to skip the gate")
