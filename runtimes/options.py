"""FlagEmbedding constructor options against what a bundle fixed when it was built.

FlagEmbedding code passes options that a bundle decided at build time (precision, device, pooling, the ColBERT
width) or that only matter for loading from a hub (``trust_remote_code``, ``cache_dir``). Each is one of:

* inert: in FlagEmbedding's own semantics it cannot change this bundle's result (``use_fp16=True`` on a CPU bundle,
  which FlagEmbedding also computes in fp32 on CPU; ``devices="cpu"`` on a CPU bundle; ``trust_remote_code``;
  ``cache_dir``): accepted, with one warning that says what the bundle runs. One nuance is in the warning:
  FlagEmbedding's embedders load the weights in fp16 with ``use_fp16=True`` and compute in fp32 on CPU from those
  rounded weights (cosines move by ~1e-3); the bundle keeps the checkpoint's fp32 weights;
* equal to what the bundle has (``pooling_method="cls"`` on a CLS bundle): accepted silently;
* contradicting the bundle (another ``pooling_method``, ``use_fp16=False`` on an fp16 bundle, a CUDA device for a
  CPU bundle, a ``peft_path``): an ``InputError`` that names the bundle's target, precision and variant.
"""
from __future__ import annotations

import warnings

from runtimes.backends import get_backend_class
from runtimes.errors import InputError
from runtimes.registry import RUNTIME_APIS, runtime_class

# decided at build time or by loading: never passed on to the runtime classes
BUILD_TIME = ("model_name_or_path", "use_fp16", "use_bf16", "devices", "pooling_method", "trust_remote_code",
              "cache_dir", "peft_path", "colbert_dim")


# FlagEmbedding's embedders load the checkpoint in the asked dtype and call .float() on CPU: with use_fp16=True (their
# default) they compute in fp32 from fp16-rounded weights. The rerankers switch use_fp16 off on CPU before .half().
# Each runtime class says which its API does (``loads_half_on_cpu``).
def loads_half_on_cpu(api) -> bool:
    return api in RUNTIME_APIS and runtime_class(api).loads_half_on_cpu


def __getattr__(name: str):
    if name == "LOADS_HALF_ON_CPU":  # the APIs whose FlagEmbedding class loads half weights on CPU
        return tuple(api for api in RUNTIME_APIS if loads_half_on_cpu(api))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BundleRunsWarning(UserWarning):
    """A FlagEmbedding option that cannot change this bundle's result was accepted and ignored."""


def on_gpu(manifest) -> bool:
    """Whether the bundle runs on a GPU (its backend says, from the manifest's engine entry)."""
    return get_backend_class(manifest.engine["kind"]).on_gpu(manifest.engine)


def describe(manifest) -> str:
    """What the bundle runs, for messages: 'fp32 on CPU (target ort-cpu, pooling mean)'."""
    variant = ", ".join(f"{k} {v}" for k, v in manifest.data.get("variant", {}).items())
    where = get_backend_class(manifest.engine["kind"]).where(manifest.engine)
    return f"{manifest.precision} on {where} (target {manifest.target}{', ' + variant if variant else ''})"


def _devices(value) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for d in items:
        if isinstance(d, int) and not isinstance(d, bool):
            out.append(f"cuda:{d}")
        elif isinstance(d, str) and (d in ("cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            out.append(d)
        else:
            raise InputError(f"devices={value!r}: a bundle runs on 'cpu' or CUDA devices ('cuda', 'cuda:0', 0), "
                             f"got {d!r}")
    return out


def split_options(bundle, options: dict, caller: str) -> dict:
    """The options the runtime class takes; warns once about inert ones and raises on contradicting ones."""
    m = bundle.manifest
    runs = describe(m)
    gpu = on_gpu(m)
    inert, wrong, runtime, selected = [], [], {}, {}
    precision_flags = {k: bool(options[k]) for k in ("use_fp16", "use_bf16") if k in options}
    for name, value in options.items():
        if name not in BUILD_TIME:
            runtime[name] = value
        elif name == "model_name_or_path":
            wrong.append(f"model_name_or_path={value!r} (the bundle path is the model; pass it as the first argument)")
        elif name == "peft_path":
            if value is not None:
                wrong.append(f"peft_path={value!r} (merge the adapter into the checkpoint, then export that)")
        elif name in ("trust_remote_code", "cache_dir"):
            if value:
                inert.append(f"{name}={value!r}")
        elif name == "devices":
            if value is None:
                continue
            devices = _devices(value)
            if ("cpu" in devices) if gpu else any(d != "cpu" for d in devices):
                build = "ort-cpu" if gpu else "ort-cuda or ort-cuda-fp16"
                wrong.append(f"devices={value!r} (build --target {build} for that device)")
            elif gpu and len(devices) == 1 and ":" in devices[0]:  # FlagEmbedding's one device: the bundle's too
                selected["device_id"] = int(devices[0].split(":")[1])
            else:
                inert.append(f"devices={value!r}" + (" (the bundle runs on one device)" if len(devices) > 1 else ""))
        elif name == "pooling_method":
            have = m.data.get("variant", {}).get("pooling", "cls")
            if value is not None and value != have:
                wrong.append(f"pooling_method={value!r} (the bundle pools with '{have}'; rebuild with --pooling "
                             f"{value})")
        elif name == "colbert_dim":
            have = (m.data.get("model") or {}).get("colbert_dim")
            if value not in (None, -1, have):
                wrong.append(f"colbert_dim={value!r} (the bundle's ColBERT head has {have} dimensions)")
    if precision_flags:
        asked = "bf16" if precision_flags.get("use_bf16") else "fp16" if precision_flags.get("use_fp16") else "fp32"
        flags = ", ".join(f"{k}={v}" for k, v in precision_flags.items())
        if asked == m.precision:
            pass
        elif m.precision in ("fp16", "bf16") or (gpu and m.precision == "fp32"):
            other = {"fp32": "ort-cuda" if gpu else "ort-cpu", "fp16": "ort-cuda-fp16", "bf16": "ort-cuda-fp16"}[asked]
            wrong.append(f"{flags} asks for {asked} (build --target {other} for that, or drop the option)")
        elif gpu:  # an int8 GPU bundle
            inert.append(flags)
        elif asked != "fp32" and loads_half_on_cpu(m.runtime.get("api")):
            inert.append(f"{flags} (FlagEmbedding computes in fp32 on CPU, from weights it loaded in {asked}; "
                         "the bundle keeps the checkpoint's weights)")
        else:  # a CPU bundle (FlagEmbedding computes fp32 on CPU whatever use_fp16 says) or an int8 bundle
            inert.append(flags + " (FlagEmbedding computes in fp32 on CPU)")
    if wrong:
        raise InputError(f"{caller}: {'; '.join(wrong)}: this bundle runs {runs}. A bundle fixes these when it is "
                         "built; drop the option or build another bundle (bge-export --help lists the targets and "
                         "export options)")
    if inert:
        warnings.warn(f"{caller}: ignoring {', '.join(inert)}: this bundle runs {runs}", BundleRunsWarning,
                      stacklevel=3)
    if selected:
        runtime["backend_options"] = {**selected, **(runtime.get("backend_options") or {})}
    return runtime
