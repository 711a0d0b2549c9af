"""The config schema: typed dataclasses under the yaml files (Hydra's structured-config pattern).

Every yaml option of a group starts with `defaults: [/schema/<group>/<schema>@_here_]`, so Hydra
checks each value against its type while it composes: `seed=1.5`, `modulation.alpha=abc` or
`precision=fp16` fail before training, and `cli.one_line` turns Hydra's message into one line.
A method's schema lives in its own file (`Method.Config`) and is stored here by the registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from .choice import Choice


Precision = Choice("Precision", {v: v for v in ("fp32", "bf16")})
FrameSelection = Choice("FrameSelection", {v: v for v in ("even", "random", "reference", "segments")})
Modalities = Choice("Modalities", {v: v for v in ("both", "audio", "visual")})
Mode = Choice("Mode", {v: v for v in ("train", "eval")})
CropPer = Choice("CropPer", {v: v for v in ("frame", "clip")})
Unimodal = Choice("Unimodal", {v: v for v in ("native", "split", "zero", "mean", "probe")})
Scheduler = Choice("Scheduler", {v: v for v in ("step", "none")})
ConvNorm = Choice("ConvNorm", {v: v for v in ("batch", "none")})
Preload = Choice("Preload", {v: v for v in ("auto", "off", "eval", "all")})
CompileMode = Choice("CompileMode", {v: v for v in ("default", "reduce-overhead", "max-autotune",
                                                    "max-autotune-no-cudagraphs")})  # torch.compile's
WandbMode = Choice("WandbMode", {v: v for v in ("offline", "online", "disabled")})


@dataclass
class ProtocolConfig:
    name: str = "fair"                # fair | paper (configs/protocol/)


@dataclass
class ProbeConfig:
    enabled: bool = False             # linear probes on the frozen encoders after training
    epochs: int = 50
    lr: float = 1e-3


@dataclass
class DDPConfig:
    """Multi-process training (torchrun or SLURM tasks; src/avbalance/distributed.py)."""
    sync_batchnorm: bool = False      # BatchNorm statistics over the global batch (CUDA only)
    find_unused_parameters: bool = False  # for a method that leaves some parameters without a gradient
    backend: str = "auto"             # auto (nccl on CUDA, gloo on CPU) | nccl | gloo


@dataclass
class SpeedConfig:
    """Speed (src/avbalance/speed.py): none changes the method or the data, only the pace (and, on a GPU,
    float rounding). On CUDA only, except compile, async_checkpoint and an explicit preload."""
    channels_last: bool = True        # NHWC convolutions (tensor cores)
    cudnn_benchmark: bool = True      # cuDNN times its algorithms per input shape once, keeps the fastest
    fused_optimizer: bool = True      # one fused CUDA kernel for the optimizer step (same update rule)
    compile: bool = False             # torch.compile each encoder
    compile_mode: CompileMode = CompileMode["default"]  # torch.compile's mode (reduce-overhead: CUDA graphs)
    cuda_graph: bool = False          # the training step replayed from a CUDA graph (off: not yet measured on a GPU)
    async_checkpoint: bool = True     # checkpoints written by a background thread while training goes on (CPU too)
    preload: Preload = Preload.auto   # prepared splits copied to the device once: auto (CUDA, if they fit) | off | eval | all


@dataclass
class TrainConfig:
    model: Any = MISSING
    dataset: Any = MISSING
    fusion: Any = MISSING
    modulation: Any = MISSING
    optim: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:N (checked in config.validate)
    epochs: int = II("dataset.epochs")
    batch_size: int = 64
    eval_batch_size: int = 256        # evaluation passes (speed only: eval-mode BatchNorm)
    precision: Precision = Precision.fp32
    num_workers: int = 0
    ckpt_every: int = 1               # epochs between writes of ckpt/last.pt (always after the last epoch)
    resume: bool = False
    data_root: str = "data"
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    skip_done: bool = False           # a run dir that already holds a finished summary.json: return at once
    mode: Mode = Mode.train           # eval: evaluate `ckpt` instead of training
    ckpt: Optional[str] = None


# --- dataset -----------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    name: str = MISSING
    loader: str = MISSING
    epochs: int = MISSING
    num_classes: Optional[int] = MISSING
    selection_split: str = "val"
    train_splits: List[str] = field(default_factory=lambda: ["train"])  # protocol=paper: [train, val]
    spec_shape: Optional[List[int]] = None
    frames: int = 1
    image_size: int = 224
    frame_selection: FrameSelection = FrameSelection.even
    reference_frames: FrameSelection = FrameSelection.reference  # what the reference code feeds (protocol=paper)


@dataclass
class ToyDataset(DatasetConfig):
    n_train: int = 1200
    n_val: int = 600
    n_test: int = 600
    audio_clean_frac: float = 0.8
    audio_snr: float = 3.0
    visual_snr: float = 0.55


@dataclass
class PreparedDataset(DatasetConfig):
    root: str = MISSING
    prep_command: str = ""
    crop_per: CropPer = CropPer.frame
    audio_crop: Optional[int] = None


# --- model, fusion, optim, logger --------------------------------------------------------------
@dataclass
class ResNet18Model:
    name: str = "resnet18"
    modalities: Modalities = Modalities.both  # audio | visual: a unimodal model (one encoder + linear head)


@dataclass
class ConvModel:
    name: str = MISSING
    width: int = 16
    depth: int = 2
    norm: ConvNorm = ConvNorm.batch    # batch | none (outputs independent of the batch's other samples)
    modalities: Modalities = Modalities.both


@dataclass
class FusionConfig:
    name: str = MISSING
    unimodal: Unimodal = Unimodal.native


@dataclass
class SumFusion(FusionConfig):
    eval_half_bias: bool = False


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Scheduler = Scheduler.step
    step_size: int = 70
    gamma: float = 0.1


@dataclass
class SGDOptim(OptimConfig):
    momentum: float = 0.9


@dataclass
class AdamOptim(OptimConfig):
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class WandbLogger:
    name: str = "wandb"
    project: str = "avbalance"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline
    run_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


SCHEMAS = {
    "dataset": {"toy": ToyDataset, "prepared": PreparedDataset},
    "model": {"resnet18": ResNet18Model, "conv": ConvModel},
    "fusion": {"fusion": FusionConfig, "sum": SumFusion},
    "optim": {"sgd": SGDOptim, "adam": AdamOptim},
    "logger": {"none": NoLogger, "wandb": WandbLogger},
}
_stored: set[str] = set()  # "": the core schemas; then the methods' names


def _plugins_searchpath() -> str:
    """train.yaml's hydra.searchpath entry: the plug-in folder's config groups, when it exists."""
    from .registry import plugin_dir
    folder = plugin_dir()
    return f"file://{folder.resolve()}" if folder.is_dir() else "pkg://avbalance"  # (a harmless no-op entry)


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent); must run before composing. Methods
    are looked up on every call, so that a plug-in loaded later gets its schema stored too."""
    from .registry import METHODS  # methods carry their own schema

    cs = ConfigStore.instance()
    if "" not in _stored:
        _stored.add("")
        OmegaConf.register_new_resolver("avbalance_plugins", _plugins_searchpath, replace=True)
        cs.store(name="train_schema", node=TrainConfig)
        for group, schemas in SCHEMAS.items():
            for name, node in schemas.items():
                cs.store(group=f"schema/{group}", name=name, node=node)
    for name in METHODS.names():
        if name not in _stored:
            cs.store(group="schema/modulation", name=name, node=METHODS.get(name).Config)
            _stored.add(name)
