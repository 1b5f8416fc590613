"""Run configuration shared by the plain loop, the Prefect flows and the benchmarks."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("synthetic", "market1501", "manifest")
CLUSTER_METHODS = ("dbscan", "hdbscan")


@dataclass
class RunConfig:
    """Every knob of one unsupervised (or supervised) run.

    ``p * k`` is the **per-device** batch: Cluster-Contrast results depend on it through
    BatchNorm statistics, so it is recorded with every result row.
    """

    name: str = "synthetic-demo"
    dataset: str = "synthetic"
    data_root: str = "data/synthetic"
    runs_dir: str = "runs"
    mode: str = "unsupervised"  # or "supervised" (ground-truth labels, upper bound)
    # model
    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    init_checkpoint: str | None = None
    height: int = 128
    width: int = 64
    # rounds / clustering
    rounds: int = 3
    cluster_method: str = "dbscan"
    eps: float = 0.6
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    knn: str = "exact"
    # ISE
    use_ise: bool = True
    ise_interp: bool = True
    ise_lp: bool = True
    ise_lambda0: float = 1.0
    ise_k: int = 1
    lp_weight: float = 0.1
    lp_temp: float = 0.6
    # training
    p: int = 16
    k: int = 16
    iters: int = 50
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    memory_mode: str = "hard"
    momentum: float = 0.1
    temp: float = 0.05
    extra_losses: list[str] = field(default_factory=list)
    supervised_loss: str = "id+triplet"
    num_workers: int = 1
    # runtime
    seed: int = 0
    bf16: Any = "auto"
    device: str = "auto"
    extract_batch_size: int = 128
    flip: bool = False
    rerank: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"RunConfig.dataset: {self.dataset!r} is not one of {DATASETS}")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ValueError(f"RunConfig.cluster_method: {self.cluster_method!r} is not one of {CLUSTER_METHODS}")
        if self.mode not in ("unsupervised", "supervised"):
            raise ValueError(f"RunConfig.mode: {self.mode!r} must be 'unsupervised' or 'supervised'")
        for name in ("rounds", "p", "k", "iters", "height", "width", "min_samples", "k1", "k2"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "rounds" else 1):
                raise ValueError(f"RunConfig.{name}: expected a positive integer, got {value!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"RunConfig.eps: Jaccard eps must lie in (0, 1), got {self.eps!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def round_dir(self, round_idx: int) -> Path:
        return self.run_dir / f"round_{round_idx:03d}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"RunConfig: unknown field(s) {unknown}")
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    # parameters that change what each stage computes (cache keys)
    def model_params(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "pretrained": self.pretrained, "height": self.height, "width": self.width}

    def cluster_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("cluster_method", "eps", "min_samples", "k1", "k2", "knn")}

    def ise_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("use_ise", "ise_interp", "ise_lp", "ise_lambda0", "ise_k", "lp_weight", "lp_temp")}

    def train_params(self) -> dict[str, Any]:
        keys = ("mode", "p", "k", "iters", "lr", "weight_decay", "step_size", "memory_mode", "momentum", "temp",
                "extra_losses", "supervised_loss", "seed", "rounds", "height", "width", "backbone", "bf16", "device")
        return {**{k: getattr(self, k) for k in keys}, **self.ise_params()}
