"""What one bench run times and how (``BenchSettings``), shared by the command line (bench.args) and the timing
loop (bench.harness), so that neither imports the other for it."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_SEQS = (16, 128, 512)


@dataclass(frozen=True)
class Peers:
    """The peers a run asks for (each still skipped where it cannot run the recipe or this machine)."""
    flagmodel: bool = True  # FlagEmbedding's own object (the reference every speed-up and check is against)
    optimum: bool = True  # optimum's ONNX export (ORT CPU)
    torch_bf16: bool = True  # the reference's model cast to bf16 in plain torch (CPUs with bf16)
    optimum_intel: bool = True  # optimum-intel's OpenVINO export, fp32 and bf16 (where it is installed)

    def any(self) -> bool:
        return self.flagmodel or self.optimum or self.torch_bf16 or self.optimum_intel


@dataclass(frozen=True)
class BenchSettings:
    """What one bench run times and how."""
    batches: tuple[int, ...] = DEFAULT_BATCHES
    seqs: tuple[int, ...] = DEFAULT_SEQS  # tokens per text (cells above the model's positions are skipped)
    repeats: int = 5  # timed runs per contender and cell
    warmup: int = 1  # extra untimed runs per contender and cell
    peers: Peers = field(default_factory=Peers)
    reference_device: str = "cpu"  # "cuda": FlagEmbedding fp16 on the first GPU, every row against the GPU's peak

    @property
    def gpu(self) -> bool:
        return self.reference_device == "cuda"
