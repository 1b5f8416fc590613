"""Run configuration shared by the plain loop, the Prefect flows and the benchmarks."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("synthetic", "market1501", "manifest")
CLUSTER_METHODS = ("dbscan", "hdbscan")
#: reid_core.cluster.knn.KNN_METHODS (repeated here so the config imports no torch; a test keeps them equal)
KNN_METHODS = ("exact", "faiss", "faiss-ivf", "faiss-hnsw", "pynndescent")


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
    knn: str = "exact"  # k-NN backend: exact, faiss (exact), faiss-ivf, faiss-hnsw, pynndescent (reid_core.cluster.knn)
    knn_options: dict[str, Any] = field(default_factory=dict)  # backend options, e.g. {"nprobe": 64} or {"ef_search": 256}
    knn_recall_sample: int = 1000  # approximate backends: rows whose recall@k1 is checked against exact k-NN; 0 = off
    camera_norm: bool = False  # remove each camera's mean feature before the k-NN (needs camera ids)
    split_factor: float = 0.0  # re-cluster clusters above split_factor x median size with a tighter eps; 0 = off
    eps_rho: float = 0.0  # eps = mean of the rho fraction of smallest Jaccard distances, each round; 0 = fixed eps
    k1_per_cluster: float = 0.0  # k1 = this x median cluster size of a first pass (10..k1); 0 = fixed k1
    # ISE
    use_ise: bool = True
    ise_interp: bool = True
    ise_lp: bool = True
    ise_lambda0: float = 1.0
    ise_k: int = 1
    lp_weight: float = 0.1
    lp_temp: float = 0.6
    lp_positive: str = "hardest"  # "hardest" same-label support sample (paper) or "own" support samples
    ise_update_with_support: bool = True  # hard/momentum memory update also sees the support samples
    ise_horizon: int = 0  # T of the lambda schedule in iterations; 0 = planned rounds x iters
    ise_start: int = 0  # global iteration from which ISE is on (plain Cluster-Contrast before)
    # training
    p: int = 16
    k: int = 16
    iters: int = 50
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    memory_mode: str = "hard"
    momentum: float = 0.1
    temp: float = 0.05
    extra_losses: list[str] = field(default_factory=list)
    supervised_loss: str = "id+triplet"
    # AlignedReID ("aligned" term): weight of the local triplet term and the local distance's scale
    # ("mean" = shortest path / (2H - 1), on the global distance's scale; "sum" = raw path length)
    aligned_local_weight: float = 1.0
    aligned_local_scale: str = "mean"
    # weight of the "verification" term (siamese same/different head) in the supervised objective
    verification_weight: float = 1.0
    # supervised mode: train a second network beside the first (deep mutual learning, as in AlignedReID);
    # the first network is the one saved as the model and evaluated; each iteration costs about twice
    mutual_learning: bool = False
    num_workers: int = 1
    # DDP: ranks of the training stage, started with torchrun on this node (gloo on CPU, nccl on CUDA);
    # each rank trains on p x k images (the per-device batch), the global batch is train_nproc x p x k.
    # 1 = one process (today's training). Multi-node: run torchrun yourself (docs/RUNNING_ON_A_CLUSTER.md)
    train_nproc: int = 1
    use_camids: bool = True  # P x K sampler prefers other cameras of a cluster (when camera ids exist)
    # camera-aware proxies (reid_core.losses.camera_proxy); off while both weights are 0, and on a
    # set without camera ids
    cam_intra_weight: float = 0.0
    cam_inter_weight: float = 0.0
    cam_temp: float = 0.07
    cam_momentum: float = 0.2
    cam_hard_negatives: int = 50
    # runtime
    seed: int = 0
    bf16: Any = "auto"
    channels_last: Any = "auto"
    device: str = "auto"
    extract_batch_size: int = 128
    flip: bool = False
    rerank: bool = False
    # throughput (reid_core.train.TrainConfig): "memory" = decode once, batch augmentation in the main
    # process ("loader" = DataLoader + per-image transforms); fused Adam; fp32 stride-2 depthwise convs
    train_data: str = "memory"
    fused_adam: bool = True
    fp32_strided_dw: bool = True
    # extraction: decode in a prefetch thread ("thread") or in the calling thread ("inline"); bf16 convs
    # keep bf16 weights instead of autocast casting them every batch (false = the old path; same features)
    extract_decode: str = "thread"
    extract_bf16_weights: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"RunConfig.dataset: {self.dataset!r} is not one of {DATASETS}")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ValueError(f"RunConfig.cluster_method: {self.cluster_method!r} is not one of {CLUSTER_METHODS}")
        if self.aligned_local_scale not in ("sum", "mean"):  # reid_core.losses.aligned_reid.LOCAL_SCALES
            raise ValueError(f"RunConfig.aligned_local_scale: {self.aligned_local_scale!r} is not 'sum' or 'mean'")
        if self.mutual_learning and self.mode != "supervised":
            raise ValueError("RunConfig.mutual_learning: only in mode='supervised' (it needs ground-truth classes)")
        if self.mutual_learning and self.train_nproc != 1:
            raise ValueError("RunConfig.mutual_learning: not with train_nproc > 1 (DDP trains one network)")
        if self.aligned_local_weight < 0:
            raise ValueError(f"RunConfig.aligned_local_weight: must be >= 0, got {self.aligned_local_weight}")
        if not self.verification_weight >= 0:
            raise ValueError(f"RunConfig.verification_weight: must be >= 0, got {self.verification_weight}")
        if self.extract_decode not in ("inline", "thread"):  # reid_core.features.DECODE_MODES
            raise ValueError(f"RunConfig.extract_decode: {self.extract_decode!r} must be 'inline' or 'thread'")
        if self.train_data not in ("memory", "loader"):  # reid_core.train.TRAIN_DATA_PATHS
            raise ValueError(f"RunConfig.train_data: {self.train_data!r} must be 'memory' or 'loader'")
        if self.knn not in KNN_METHODS:
            raise ValueError(f"RunConfig.knn: {self.knn!r} is not one of {KNN_METHODS}")
        if not isinstance(self.knn_options, dict):
            raise ValueError(f"RunConfig.knn_options: expected a dict of backend options, got {self.knn_options!r}")
        if not isinstance(self.knn_recall_sample, int) or self.knn_recall_sample < 0:
            raise ValueError(f"RunConfig.knn_recall_sample: expected an integer >= 0, got {self.knn_recall_sample!r}")
        if self.mode not in ("unsupervised", "supervised"):
            raise ValueError(f"RunConfig.mode: {self.mode!r} must be 'unsupervised' or 'supervised'")
        for name in ("rounds", "p", "k", "iters", "height", "width", "min_samples", "k1", "k2", "train_nproc"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "rounds" else 1):
                raise ValueError(f"RunConfig.{name}: expected a positive integer, got {value!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"RunConfig.eps: Jaccard eps must lie in (0, 1), got {self.eps!r}")
        if self.split_factor and self.split_factor < 1:
            raise ValueError(f"RunConfig.split_factor: 0 (off) or >= 1 (x the median cluster size), got {self.split_factor!r}")
        if not 0 <= self.eps_rho < 0.1:
            raise ValueError(f"RunConfig.eps_rho: 0 (fixed eps) or a small fraction of pairs such as 1.6e-3, got {self.eps_rho!r}")
        if self.k1_per_cluster < 0:
            raise ValueError(f"RunConfig.k1_per_cluster: 0 (fixed k1) or > 0, got {self.k1_per_cluster!r}")

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
        params = {k: getattr(self, k) for k in ("cluster_method", "eps", "min_samples", "k1", "k2", "knn", "camera_norm",
                                                "split_factor", "eps_rho", "k1_per_cluster")}
        if self.knn_options:  # only when set, so the digests of existing runs stay valid
            params["knn_options"] = dict(sorted(self.knn_options.items()))
        return params

    def ise_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("use_ise", "ise_interp", "ise_lp", "ise_lambda0", "ise_k", "lp_weight",
                                              "lp_temp", "lp_positive", "ise_update_with_support", "ise_horizon",
                                              "ise_start")}

    def train_params(self) -> dict[str, Any]:
        """Cache-key parameters of the training stage: every field that reaches
        :class:`reid_core.train.TrainConfig` (see :func:`reid_core.pipeline.stages.train_config`) plus
        the run-level ones that change what training computes."""
        from .stages import TRAIN_CONFIG_DERIVED, train_config_fields

        # num_workers only changes how batches are prepared (workers are seeded), not what is computed
        keys = [k for k in train_config_fields() if k not in TRAIN_CONFIG_DERIVED and k != "num_workers"]
        keys += ["mode", "extra_losses", "supervised_loss", "seed", "rounds", "backbone"]
        if self.mode == "supervised":  # the supervised objective's knobs (unsupervised digests stay as they were)
            keys += ["aligned_local_weight", "aligned_local_scale", "mutual_learning"]
        params = {k: getattr(self, k) for k in sorted(set(keys))}
        if self.mode == "supervised" and self.verification_weight != 1.0:  # likewise: existing digests stay valid
            params["verification_weight"] = self.verification_weight
        if self.train_nproc != 1:  # only then, so the digests of existing runs stay valid
            params["train_nproc"] = self.train_nproc
        return params
