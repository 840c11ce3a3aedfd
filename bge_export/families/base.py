"""Family specs: data that export, build, runtime and parity read, plus the few hooks that need code."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bge_export import reference
from bge_export.build.targets import family_targets
from bge_export.checkpoint import resolve_checkpoint
from bge_export.errors import InternalError, UnsupportedFamilyError
from bge_export.options import Option, unique_options

if TYPE_CHECKING:  # pragma: no cover
    from bge_export.checkpoint import Checkpoint

AXES = ("batch", "sequence", "hidden", "colbert")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64" | "float32"
    axes: tuple[str | int, ...]

    def __post_init__(self):
        for a in self.axes:
            if isinstance(a, str) and a not in AXES:
                raise InternalError(f"axis '{a}' of {self.name} is not in the axis vocabulary {AXES}")

    def to_json(self, sizes: dict[str, int] | None = None) -> dict:
        sizes = sizes or {}
        return {"name": self.name, "dtype": self.dtype,
                "axes": [a if a in ("batch", "sequence") else sizes.get(a, a) for a in self.axes]}


FAMILIES: dict[str, type["Family"]] = {}


class Family:
    """One BGE family. Subclasses set the class-level data and implement the hooks."""

    name: ClassVar[str]
    reference_api: ClassVar[str]  # the FlagEmbedding class the runtime mirrors and parity compares with
    description: ClassVar[str]
    checkpoints: ClassVar[tuple[str, ...]]  # known hub ids of this family
    parity_outputs: ClassVar[tuple[str, ...]]  # the outputs its parity checks (rows of the tolerance table)
    # export-time variant options (the constructor's keywords); the CLI generates its flags from them
    options: ClassVar[tuple[Option, ...]] = ()
    # the targets that can build this family, in registry order: set at registration from Target.supports
    targets: ClassVar[tuple[str, ...]] = ()
    # every FlagEmbedding API the family may serve (a family may pick one per checkpoint: the LLM embedders)
    reference_apis: ClassVar[tuple[str, ...]] = ()
    # the reference's pure calls (remembered per process by parity_run.CachedReference) and the calls that change
    # what later calls return (replayed on a fresh reference)
    reference_calls: ClassVar[tuple[str, ...]] = ("encode", "encode_queries", "encode_corpus", "compute_score")
    reference_state_calls: ClassVar[tuple[str, ...]] = ()
    # how `bge-export bench` drives its FlagEmbedding API (bge_export.bench.recipe.BenchRecipe; None: not benched)
    bench_recipe: ClassVar[Any] = None
    # the (output, metric) columns of its parity summary table (the checkpoints the test suite builds for it are
    # test code: parity_tests/tiny_checkpoints.py)
    summary_columns: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, abstract: bool = False, **kw):
        super().__init_subclass__(**kw)
        if abstract:  # a shared base of several families (e.g. the decoders), never registered itself
            return
        for attr in ("name", "reference_api", "description", "checkpoints", "parity_outputs"):
            if not hasattr(cls, attr):
                raise InternalError(f"family class {cls.__name__} must define '{attr}'")
        if not cls.__dict__.get("reference_apis"):
            cls.reference_apis = (cls.reference_api,)

    # --- hooks ------------------------------------------------------------------------------------
    @classmethod
    def matches(cls, ckpt: "Checkpoint") -> bool:
        raise NotImplementedError

    def __init__(self, ckpt: "Checkpoint", **variant_options: Any):
        self.ckpt = ckpt
        self.variant = self.make_variant(**variant_options)

    @classmethod
    def options_from_variant(cls, variant: dict) -> dict:
        """The constructor options that rebuild a recorded variant (manifest -> family)."""
        return {}

    def make_variant(self, **options: Any) -> dict:
        if options:
            raise UnsupportedFamilyError(f"family {self.name} takes no variant options, got {sorted(options)}")
        return {}

    @classmethod
    def flops(cls, model_info: dict, batch: int, seq: int, variant: dict | None = None) -> float:
        """FLOPs of one forward at (batch, seq), from the manifest's model info (benchmarks); ``variant``: the
        bundle's, where it changes the work done (None: the reference's full forward)."""
        raise NotImplementedError

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        """Statistics of the runtime ``model`` against the bundle's stored reference sample."""
        raise NotImplementedError

    # True where the family exports its half-precision graphs from its own implementation (which keeps norms,
    # RoPE and softmax fp32) instead of converting an fp32 export with ONNX Runtime's generic converter
    half_export: ClassVar[bool] = False

    def export_dtype(self) -> str:
        """The weight dtype of this family object's export (fp32 unless its variant says otherwise)."""
        return self.variant.get("export_dtype", "fp32")

    def half_dtype(self) -> str:
        """The 16-bit type of this family's GPU engines (the decoders override it: bf16 for Gemma)."""
        return "fp16"

    def half_dtype_reason(self) -> str:
        """Why half_dtype is bf16 and what to build instead of an fp16 target (families that override it)."""
        return "this checkpoint overflows fp16"

    def axis_sizes(self, info: dict) -> dict[str, int]:
        """The sizes of the named axes of the family's outputs (TensorSpec axes other than batch / sequence), from
        its model info: what the manifest's io section records."""
        return {"hidden": info["hidden_size"]}

    def reference_options(self) -> dict:
        """The reference constructor's options that this family's variant fixes (pooling, cutoff layers, ...)."""
        return {}

    def reference(self, **kwargs):
        """FlagEmbedding's own class for this family, fp32 on CPU, built with the variant's options."""
        return reference.flag(self.reference_api, self.ckpt.path, **{**self.reference_options(), **kwargs})

    # The following are implemented per family.
    def model_info(self) -> dict: ...
    def inputs(self) -> list[TensorSpec]: ...
    def outputs(self) -> list[TensorSpec]: ...
    def max_sequence_length(self) -> int: ...
    def runtime_defaults(self) -> dict: ...
    def torch_module(self, *, reference: bool = False): ...
    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True): ...


def register_family(cls: type[Family]) -> type[Family]:
    if cls.name in FAMILIES:
        raise InternalError(f"family '{cls.name}' is registered twice ({FAMILIES[cls.name].__name__} and {cls.__name__})")
    cls.targets = tuple(family_targets(cls))
    FAMILIES[cls.name] = cls
    return cls


def variant_options() -> list[Option]:
    """Every family's export-time options, once each (the CLI's flags)."""
    return unique_options(f.options for f in FAMILIES.values())


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise UnsupportedFamilyError(f"unknown family '{name}'; supported families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def supported_list() -> str:
    return "; ".join(f"{f.name} ({f.description})" for f in FAMILIES.values())


def recognise(ckpt: "Checkpoint") -> type[Family]:
    hits = [f for f in FAMILIES.values() if f.matches(ckpt)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        arch = ckpt.config.get("architectures") or "?"
        mtype = ckpt.config.get("model_type", "?")
        raise UnsupportedFamilyError(
            f"{ckpt.path} (model_type={mtype}, architectures={arch}) is not a BGE family bge-export supports; "
            f"supported families: {supported_list()}"
        )
    raise UnsupportedFamilyError(f"{ckpt.path} matches several families ({[f.name for f in hits]}); this is ambiguous")


def family_from_manifest(manifest: dict) -> Family:
    """The family object a bundle was built from, on its source checkpoint (raises CheckpointError if it is gone)."""
    family_cls = get_family(manifest["family"])
    ckpt = resolve_checkpoint(manifest["source"]["checkpoint"])
    return family_cls(ckpt, **family_cls.options_from_variant(manifest["variant"]))
