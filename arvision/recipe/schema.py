"""The recipe schema: frozen attrs classes, one per table of a recipe.

``[encoder]``, ``[data]``, ``[train]``, ``[run]`` and ``[eval]`` are arvision's own tables.
``[tokenizer]``, ``[ordering]``, ``[target]`` and each ``[[decoders]]`` entry name a registered
component; the rest of such a table is validated by that component's own config class, and the
table carries the component's registration (looked up once, when the recipe is read).
"""

from typing import Any, ClassVar, Literal

import attrs

from ..config import FieldError, check, model_override, non_negative, positive, setting
from ..registry import Registration

__all__ = ["COMPILE_MODES", "ComponentTable", "DataConfig", "DecoderTable", "EncoderConfig",
           "EvalConfig", "LogConfig", "OrderingTable", "Recipe", "RunConfig", "SyntheticConfig",
           "TargetTable", "TokenizerTable", "TrainConfig"]

@attrs.frozen
class EncoderConfig:
    """The student: a timm VisionTransformer created by name, with optional overrides."""

    name: str = setting("vit_tiny_patch16_224", "timm model name of a VisionTransformer")
    img_size: int | None = setting(None, "input size in pixels (default: the data's image size)",
                                   validator=positive)
    patch_size: int | None = model_override("patch size")
    embed_dim: int | None = model_override("token width")
    depth: int | None = model_override("number of blocks")
    num_heads: int | None = model_override("attention heads")
    in_chans: int | None = setting(None, "image channels (default: the data's)", validator=positive)
    stem: Literal["patch", "tokens"] = setting(
        "patch", "'patch': patch embedding of pixels; 'tokens': embedding of the tokenizer's ids "
        "(iGPT), one token per id")
    class_token: bool = setting(True, "prepend a CLS token")
    pos_embed: Literal["learned", "sincos"] = setting(
        "learned", "'learned' position embeddings, or fixed 2-D sin-cos ones (D-iGPT, MAE)")
    taps: tuple[int, ...] = setting((), "1-based blocks whose outputs feed multi-level decoders "
                                    "(default: 4 blocks spread like 6/8/10/12 of 12)")
    mean: tuple[float, ...] = setting((0.5,), "input normalisation mean (one value or one per "
                                      "channel)")
    std: tuple[float, ...] = setting((0.5,), "input normalisation std")
    drop_path: float = setting(0.0, "stochastic depth rate", validator=non_negative)
    init: str | None = setting(
        None, "pretraining starts from this encoder (continued pretraining): an arvision "
        "pretraining checkpoint, a folder written by `arvision export` (or timm's save_for_hf), "
        "or hf-hub:ORG/NAME; name, shape and mean/std must match this table's (another img_size "
        "resamples the position embedding)")


@attrs.frozen
class SyntheticConfig:
    """Procedural images with learnable structure, for tests and smoke runs."""

    num_images: int = setting(512, "images in the set", validator=positive)
    image_size: int = setting(32, "side in pixels", validator=positive)
    channels: int = setting(3, "channels", validator=positive)
    num_classes: int = setting(4, "classes", validator=positive)


@attrs.frozen
class DataConfig:
    """Where images come from."""

    source: Literal["fashion_mnist", "imagefolder", "lmdb", "synthetic"] = setting(
        "fashion_mnist", "data source ('imagefolder': ROOT/SPLIT/<class>/<image>, as ImageNet; "
        "'lmdb': a pack made by 'arvision data pack')")
    root: str | None = setting(None, "data directory (fashion_mnist default: "
                               "/usr/share/datasets/fashion-mnist); lmdb: the pack of the split, "
                               "'{split}' in it is replaced by the split's name")
    split: str = setting("train", "split used for pretraining (fashion_mnist: train or test; "
                         "imagefolder: the sub-folder; lmdb: must match the pack's split)")
    eval_split: str = setting("test", "split used for evaluation (fashion_mnist: test; imagefolder: val)")
    limit: int | None = setting(None, "use only the first N images (smoke runs)",
                                validator=positive)
    num_workers: int = setting(0, "data loader worker processes", validator=non_negative)
    on_error: Literal["skip", "raise"] = setting(
        "skip", "an unreadable image (imagefolder, lmdb): 'skip' warns naming it and serves the next "
        "readable item in its place; 'raise' stops the run naming it")
    flip: bool = setting(False, "random horizontal flip")
    crop_scale: tuple[float, float] | None = setting(
        None, "RandomResizedCrop area range, e.g. [0.2, 1.0] (D-iGPT); unset: plain resize",
        validator=check(lambda v: 0 < v[0] <= v[1] <= 1, "0 < low <= high <= 1"))
    interpolation: Literal["bilinear", "bicubic"] = setting("bicubic", "resize interpolation")
    targets: str | None = setting(None, "target cache written by 'arvision data cache-targets': "
                                  "train on its cached views and tokens, without running the "
                                  "tokenizer")
    synthetic: SyntheticConfig = setting(attrs.Factory(SyntheticConfig), "synthetic source options")


#: ``train.compile``: what ``torch.compile`` compiles
COMPILE_MODES = ("none", "blocks", "model")


def _compile_mode(value: Any) -> Any:
    """``train.compile`` was a bool before it had modes: true = 'blocks', false = 'none'."""
    if isinstance(value, bool):
        return "blocks" if value else "none"
    return value


@attrs.frozen
class TrainConfig:
    """The optimisation."""

    batch_size: int = setting(64, "global batch size: images per optimiser step, all ranks together",
                              validator=positive)
    micro_batch: int | None = setting(
        None, "images per forward pass on each rank (default: batch_size / ranks); the rest is "
        "gradient accumulation", validator=positive)
    steps: int | None = setting(None, "total optimiser steps; overrides epochs when set",
                                validator=positive)
    epochs: float = setting(1.0, "passes over the data (when steps is unset)", validator=positive)
    base_lr: float = setting(1.5e-4, "learning rate per 256 images: lr = base_lr x batch / 256",
                             validator=positive)
    min_lr: float = setting(0.0, "learning rate at the end of the cosine", validator=non_negative)
    warmup_steps: int = setting(0, "linear warmup steps", validator=non_negative)
    warmup_epochs: float | None = setting(None, "linear warmup in epochs (overrides warmup_steps "
                                          "when set)", validator=non_negative)
    weight_decay: float = setting(0.05, "AdamW weight decay (none on biases, norms, 1-D params)",
                                  validator=non_negative)
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW betas")
    clip_grad: float | None = setting(None, "clip the gradient norm to this value",
                                      validator=positive)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", "autocast precision: bf16 (CPU and CUDA), fp16 with a gradient scaler (CUDA), "
        "fp32, or 'auto': bf16 where the device computes it natively (recent GPUs, CPUs with "
        "AVX512-BF16/AMX), else fp16 on CUDA and fp32 on the CPU")
    device: str = setting("auto", "'auto', 'cpu', 'cuda' or 'cuda:N' (under torchrun: the local "
                          "rank's GPU)")
    strategy: Literal["ddp", "fsdp"] = setting(
        "ddp", "with several processes (torchrun): 'ddp' replicates the model, 'fsdp' shards it "
        "per block (FSDP2 fully_shard), for ViT-L/H encoders")
    checkpoint_every: int | None = setting(None, "write a checkpoint every N steps (and at the end)",
                                           validator=positive)
    keep_checkpoints: int = setting(2, "how many step checkpoints to keep", validator=positive)
    skip_nonfinite: int = setting(0, "skip up to N steps whose loss or gradient is not finite "
                                  "before stopping the run", validator=non_negative)
    ema: float | None = setting(None, "decay of an EMA of the encoder (e.g. 0.9999); unset: none",
                                validator=check(lambda v: 0 < v < 1, "a number in (0, 1)"))
    activation_checkpointing: bool = setting(
        False, "recompute the encoder's and the decoders' blocks in backward to save memory")
    recompute: tuple[Literal["mlp_activation", "attention_weights"], ...] = setting(
        (), "what backward recomputes instead of keeping from forward, for less memory at some "
        "speed: 'mlp_activation' (each MLP's GELU output, from the GELU's input), "
        "'attention_weights' (softmax(q k^T / sqrt(d)), where attention is written out: bf16 on "
        "the CPU); see docs/performance.md")
    compile: Literal["none", "blocks", "model"] | bool = setting(
        "none", "torch.compile: 'blocks' compiles every transformer block (regional compilation), "
        "'model' the whole forward (the plan is drawn eagerly), 'none' nothing; true and false "
        "still mean 'blocks' and 'none'", converter=_compile_mode,
        validator=check(lambda v: v in COMPILE_MODES, "one of 'none', 'blocks', 'model'"))
    attention_backend: Literal["auto", "sdpa", "flex"] = setting(
        "auto", "pretraining's block-causal attention: 'sdpa' (a boolean mask), 'flex' (flex "
        "attention with a BlockMask: kernels skip masked blocks; CUDA only), 'auto' (flex on "
        "CUDA, else sdpa)")
    cpu_allocator: Literal["reuse", "system"] = setting(
        "reuse", "training on the CPU: 'reuse' keeps the memory a step frees for the next step "
        "(glibc: no mmap, no trimming; no page faults per step), 'system' leaves the C "
        "allocator's defaults")
    deterministic: bool = setting(False, "deterministic algorithms (bitwise repeatable runs)")
    log_every: int = setting(10, "log metrics every N steps", validator=positive)
    seed: int = setting(0, "seed for weights, data order, augmentation and segment orders")


@attrs.frozen
class EvalConfig:
    """Probes that ``arvision run`` runs after pretraining (docs/evaluation.md)."""

    probes: tuple[Literal["linear", "knn", "attentive"], ...] = setting(
        ("linear", "knn"), "probes on the frozen encoder")
    blocks: tuple[int, ...] = setting((), "1-based blocks whose features are averaged (default: "
                                      "the middle block); the attentive probe reads their tokens")
    attention: Literal["bidirectional", "causal", "as_trained"] = setting(
        "as_trained", "how the frozen encoder attends while features are extracted: "
        "'bidirectional' (no mask), 'causal' (the block-causal mask of a raster plan over the "
        "ordering's segments), 'as_trained' (bidirectional after prefix attention, else "
        "block-causal in the recipe's order)")
    limit: int | None = setting(None, "train images for the probes (default: all)",
                                validator=positive)
    eval_limit: int | None = setting(None, "eval images (default: all)", validator=positive)
    random_init: bool = setting(True, "also probe the same encoder at its seeded random "
                                "initialisation, as a baseline")
    reference: float | None = setting(None, "a known accuracy (percent) to print beside, e.g. "
                                      "84.2: logistic regression on raw Fashion-MNIST pixels")
    reference_name: str = setting("reference", "what the reference accuracy is")


@attrs.frozen
class LogConfig:
    """Experiment trackers: each gets the step metrics, the recipe and the results (docs/tracking.md)."""

    trackers: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = setting(
        ("tensorboard",), "experiment trackers ('mlflow' and 'wandb' need the extras "
        "arvision[mlflow] / arvision[wandb])",
        validator=check(lambda v: len(set(v)) == len(v), "each tracker once"))
    project: str = setting("arvision", "MLflow experiment and W&B project the run is logged in")
    mlflow_uri: str | None = setting(
        None, "MLflow tracking URI, e.g. sqlite:///runs/mlflow.db or http://host:5000 (default: "
        "MLFLOW_TRACKING_URI, else MLflow's own default, sqlite:///mlflow.db in the working "
        "directory)")
    wandb_mode: Literal["auto", "online", "offline"] = setting(
        "auto", "W&B mode ('auto': WANDB_MODE, else online); 'offline' keeps the run in OUT/wandb/ "
        "for a later `wandb sync`")


@attrs.frozen
class RunConfig:
    """Naming and output."""

    name: str = setting("run", "run name")
    out_dir: str | None = setting(None, "output directory (default: runs/<name>)")


@attrs.frozen
class ComponentTable:
    """A recipe table that names a registered component: ``config`` is an instance of the
    component's config class, ``registration`` what its plugin registered (factory and class)."""

    KIND: ClassVar[str] = ""
    name: str
    config: Any
    registration: Registration = attrs.field(kw_only=True, eq=False, repr=False)

    @classmethod
    def shared_keys(cls) -> tuple[str, ...]:
        """The table's keys beside ``name`` that every component of the kind takes."""
        return tuple(f.name for f in attrs.fields(cls)
                     if f.name not in ("name", "config", "registration"))


@attrs.frozen
class TokenizerTable(ComponentTable):
    KIND: ClassVar[str] = "tokenizer"


@attrs.frozen
class OrderingTable(ComponentTable):
    """The ``[ordering]`` table: an ordering, and whether a random prefix of it is read
    bidirectionally."""

    KIND: ClassVar[str] = "ordering"
    prefix_attention: bool = setting(
        False, "AIM's prefix attention: each sample's first K visible segments (K uniform in "
        "1..S-1, drawn from the sample's seed) attend to each other bidirectionally, the rest "
        "block-causally, and only targets past the prefix are scored; the encoder then also "
        "works bidirectionally, as probes read it")


@attrs.frozen
class TargetTable(ComponentTable):
    KIND: ClassVar[str] = "target"


@attrs.frozen
class DecoderTable(ComponentTable):
    """One ``[[decoders]]`` entry: a decoder, what it predicts and its weight in the loss."""

    KIND: ClassVar[str] = "decoder"
    predicts: Literal["next", "visible"] = setting(
        "next", "'next': segment k+1 from segments <= k (generative); 'visible': segment k "
        "(discriminative)")
    weight: float = setting(1.0, "weight of this decoder's loss in the total",
                            validator=non_negative)
    key: str | None = setting(None, "name of this loss part in logs (default: NAME_PREDICTS)")

    @property
    def loss_key(self) -> str:
        return self.key or f"{self.name}_{self.predicts}"


def _distinct_keys(_instance: Any, _attribute: attrs.Attribute, decoders: tuple) -> None:
    if not decoders:
        raise FieldError("decoders", "expected at least one [[decoders]] table")
    keys = [decoder.loss_key for decoder in decoders]
    for key in keys:
        if keys.count(key) > 1:
            raise FieldError("decoders", f"two decoders share the loss key {key!r}; set 'key' on one")


@attrs.frozen
class Recipe:
    """A full pretraining run."""

    KIND: ClassVar[str] = "pretrain"  # what its checkpoints are (a run resumes only its own kind)
    tokenizer: TokenizerTable
    target: TargetTable
    decoders: tuple[DecoderTable, ...] = attrs.field(validator=_distinct_keys)
    ordering: OrderingTable
    encoder: EncoderConfig = attrs.Factory(EncoderConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    train: TrainConfig = attrs.Factory(TrainConfig)
    run: RunConfig = attrs.Factory(RunConfig)
    eval: EvalConfig | None = None
    log: LogConfig = attrs.Factory(LogConfig)
