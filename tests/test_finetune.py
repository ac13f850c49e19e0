"""Full fine-tuning: the classifier, its data and mixing, the engine (resume), the CLI."""

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
import torch.nn.functional as F

from arvision.checkpoint import load_checkpoint
from arvision.data.synthetic import SyntheticImages
from arvision.finetune import (
    build_finetuner,
    finetune,
    finetune_tables,
    structure_finetune_recipe,
)
from arvision.finetune.data import SeededTransform, train_transform
from arvision.pretrain import train
from conftest import REPO, TINY, require_fashion_mnist, run_cli, tiny_recipe

#: Fine-tuning the tiny encoder of conftest.TINY on its synthetic data, a few fp32 steps.
SETS = ["train.batch_size=8", "train.steps=4", "train.precision='fp32'", "train.base_lr=0.05",
        "train.warmup_epochs=0.125", "train.log_every=1"]  # warmup: 1 step of 8 per epoch


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained")
    return train(tiny_recipe(train={"ema": 0.9}), out).checkpoint


def recipe_for(checkpoint: Path | None, *sets: str):
    tables = finetune_tables(checkpoint, None, [*SETS, *sets]) if checkpoint else \
        scratch_tables(*sets)
    return structure_finetune_recipe(tables, "finetune.toml")


def scratch_tables(*sets: str) -> dict:
    from arvision.recipe import apply_override

    tables = copy.deepcopy({"finetune": {}, "run": {"name": "scratch"}, "train": {},
                            "data": {**TINY["data"], "flip": True},
                            "encoder": {**TINY["encoder"], "drop_path": 0.1}})
    for assignment in [*SETS, *sets]:
        apply_override(tables, assignment)
    return tables


def test_seeded_transform_repeats_per_key_and_leaves_the_global_rngs_alone():
    recipe = recipe_for(None)
    items = SeededTransform(SyntheticImages(8, 16, 3, 4), train_transform(recipe, 16, 3), seed=0)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first, again, later = items[(0, 3)][0], items[(0, 3)][0], items[(1, 3)][0]
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert first.shape == (3, 16, 16)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image():
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from arvision.finetune.data import posterize

    transform = train_transform(recipe_for(None), 16, 3)
    ops = [op for step in transform.transforms for op in getattr(step, "ops", ())]
    posterizing = [op for op in ops if isinstance(op, AugmentOp) and "Posterize" in op.name]
    assert posterizing and all(op.aug_fn is posterize for op in posterizing)
    full = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    full.aug_fn = posterize
    image = Image.new("RGB", (4, 4), (200, 100, 50))
    assert full(image).getextrema() == ((0, 0), (0, 0), (0, 0))  # 0 bits kept


def test_pretrained_encoder_is_loaded_and_the_head_is_new(pretrained, tmp_path):
    trainer, start = build_finetuner(recipe_for(pretrained), tmp_path, "finetune.toml")
    assert start == {"checkpoint": str(pretrained), "step": 4, "weights": "model"}
    encoder = load_checkpoint(pretrained)["model"]
    vit = trainer.model.vit
    for key, value in vit.state_dict().items():
        if key.startswith(("head.", "fc_norm.")):
            assert f"encoder.vit.{key}" not in encoder
        else:
            torch.testing.assert_close(value, encoder[f"encoder.vit.{key}"], rtol=0, atol=0)
    assert vit.head.weight.abs().max() < 1e-3  # MAE / BEiT start the head near zero
    assert "norm.weight" not in vit.state_dict()  # average pool: fc_norm after the pool instead


def test_ema_weights_and_a_larger_input_resample_the_positions(pretrained, tmp_path):
    trainer, _ = build_finetuner(recipe_for(pretrained, "finetune.weights='ema'",
                                            "encoder.img_size=24"), tmp_path, "finetune.toml")
    ema = load_checkpoint(pretrained)["ema"]
    vit = trainer.model.vit
    assert vit.pos_embed.shape == (1, 1 + 6 * 6, 32)
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, ema["vit.blocks.1.mlp.fc2.weight"])
    pretrained = ema["vit.pos_embed"]  # (1, 1 + 4 * 4, 32): CLS, then the 4x4 grid
    grid = pretrained[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resampled = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False,
                              antialias=True).permute(0, 2, 3, 1).reshape(1, 36, 32)
    torch.testing.assert_close(vit.pos_embed[:, :1], pretrained[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(vit.pos_embed[:, 1:], resampled, rtol=1e-5, atol=1e-6)


def test_layer_decay_scales_the_lr_block_by_block(pretrained, tmp_path):
    trainer, _ = build_finetuner(recipe_for(pretrained, "finetune.layer_decay=0.5"), tmp_path,
                                 "finetune.toml")
    groups = trainer.optimizer.param_groups
    vit = trainer.model.vit
    scale = {id(param): group["lr_scale"] for group in groups for param in group["params"]}
    assert scale[id(vit.patch_embed.proj.weight)] == 0.5 ** 3  # depth 2: embedding, 2 blocks, head
    assert scale[id(vit.blocks[0].attn.qkv.weight)] == 0.5 ** 2
    assert scale[id(vit.blocks[1].attn.qkv.weight)] == 0.5
    assert scale[id(vit.head.weight)] == 1.0
    decay = {id(param): group["weight_decay"] for group in groups for param in group["params"]}
    assert decay[id(vit.pos_embed)] == decay[id(vit.head.bias)] == 0.0
    assert decay[id(vit.head.weight)] == 0.05


def test_finetune_with_mixup_and_layer_decay_resumes_exactly(pretrained, tmp_path):
    recipe = recipe_for(pretrained, "train.checkpoint_every=2", "train.ema=0.9")
    straight = finetune(recipe, tmp_path / "straight", "finetune.toml")
    assert straight.train.steps == 4 and len(straight.train.losses) == 4
    interrupted = tmp_path / "resumed" / "checkpoints"  # as if killed after step 2
    interrupted.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "step_00000002.pt", interrupted)
    resumed = finetune(recipe, tmp_path / "resumed", "finetune.toml")
    assert resumed.train.losses == straight.train.losses[2:]  # bitwise: RandAug, erasing, mixup
    first = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    second = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    scores = json.loads((tmp_path / "straight" / "eval.json").read_text())["finetune"]
    assert scores["init"] == "pretrained" and scores["step"] == 4
    assert 0 <= scores["top1"] <= 100 and 0 <= scores["ema"]["top1"] <= 100
    assert scores["eval_images"] == 64


def test_from_scratch_learns_the_synthetic_classes(tmp_path):
    recipe = recipe_for(None, "train.steps=60", "train.batch_size=16", "train.base_lr=0.02",
                        "finetune.mixup=0.0", "finetune.cutmix=0.0", "finetune.reprob=0.0",
                        "finetune.auto_augment='none'", "finetune.eval_crop=1.0",
                        "data.flip=false", "data.crop_scale=[0.5, 1.0]",
                        "data.synthetic.num_images=256")  # classes are orientations: no flip
    result = finetune(recipe, tmp_path, "scratch.toml")
    assert result.scores["init"] == "scratch" and result.scores["pretrained"] is None
    assert result.scores["top1"] > 60  # 4 classes: chance is 25
    assert sum(result.train.losses[-10:]) / 10 < result.train.losses[0]


def test_finetuned_classifier_serves_as_a_timm_teacher(tmp_path):
    from arvision.build import build_tokenizer, resolve

    recipe = recipe_for(None, "train.steps=2")
    result = finetune(recipe, tmp_path, "scratch.toml")
    teacher = tiny_recipe(tokenizer={
        "name": "timm", "model": "vit_tiny_patch16_224", "checkpoint": result.scores["classifier"],
        "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "mean": [0.5], "std": [0.5], "precision": "fp32"}, target={"name": "cosine"})
    tokenizer = build_tokenizer(resolve(teacher))
    tokens = tokenizer(torch.rand(2, 3, 16, 16))
    assert tokens.tokens.shape == (2, 4, 4, 32)


def test_eval_finetune_cli_writes_both_eval_files(pretrained, capsys):
    sets = [item for assignment in SETS for item in ("--set", assignment)]
    code, out, err = run_cli(capsys, "eval", "finetune", pretrained, *sets)
    assert code == 0, err
    assert "fine-tuned (pretrained): top-1" in out
    run_dir = pretrained.parent
    tuned = json.loads((run_dir / "finetune" / "eval.json").read_text())["finetune"]
    merged = json.loads((run_dir / "eval.json").read_text())["finetune"]
    assert tuned["top1"] == merged["top1"]
    assert (run_dir / "finetune" / "classifier_timm.pt").is_file()


def test_finetune_recipe_runs_through_arvision_run(tmp_path, capsys):
    path = tmp_path / "scratch.toml"
    path.write_text(tomli_w.dumps(scratch_tables("train.steps=2")))
    code, out, err = run_cli(capsys, "run", path, "--out", tmp_path / "out")
    assert code == 0, err
    assert "fine-tuned (scratch): top-1" in out
    assert (tmp_path / "out" / "checkpoint.pt").is_file()


@pytest.mark.parametrize(("sets", "message"), [
    (["encoder.depth=3"], "encoder.depth: 3 does not match the encoder of"),
    (["train.batch_size=6", "train.micro_batch=3"], "expected an even number per forward, got 3"),
    (["finetune.weights='ema'", "encoder.depth=2"], "no EMA"),
    (["data.targets='cache.lmdb'"], "data.targets: a target cache feeds pretraining"),
    (["finetune.mixup=-1"], "finetune.mixup: expected a number >= 0"),
    (["encoder.stem='tokens'"], "encoder.stem: fine-tuning needs 'patch'"),
])
def test_bad_finetune_settings_are_one_line_errors(pretrained, tmp_path, capsys, sets, message):
    out = tmp_path / "pre"
    checkpoint = train(tiny_recipe(), out).checkpoint if "no EMA" in message else pretrained
    capsys.readouterr()  # the pretraining's progress lines
    argv = [item for assignment in [*SETS, *sets] for item in ("--set", assignment)]
    code, _out, err = run_cli(capsys, "eval", "finetune", checkpoint, *argv, "--out",
                              tmp_path / "tune")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_pretraining_recipe_is_not_a_finetune_recipe(pretrained, capsys, tmp_path):
    path = tmp_path / "pre.toml"
    path.write_text(tomli_w.dumps(TINY))
    code, _out, err = run_cli(capsys, "eval", "finetune", pretrained, "--recipe", path)
    assert code == 2 and "not a fine-tuning recipe (expected a [finetune] table)" in err


def test_finetuning_a_finetune_checkpoint_is_refused(tmp_path, capsys):
    result = finetune(recipe_for(None, "train.steps=2"), tmp_path / "tuned", "scratch.toml")
    code, _out, err = run_cli(capsys, "eval", "finetune", result.train.checkpoint)
    assert code == 2 and "not a pretraining checkpoint" in err


def test_data_workers_render_the_same_batches(pretrained, tmp_path):
    with_workers = recipe_for(pretrained, "train.steps=2", "data.num_workers=2")
    trainer, _ = build_finetuner(with_workers, tmp_path / "built", "ft.toml")
    assert trainer.batches.loader.num_workers == 2  # the batches do come from worker processes
    inline = finetune(recipe_for(pretrained, "train.steps=2"), tmp_path / "inline", "ft.toml")
    workers = finetune(with_workers, tmp_path / "workers", "ft.toml")
    assert len(inline.train.losses) == 2 and workers.train.losses == inline.train.losses


@pytest.mark.slow
def test_supervised_fashion_mnist_recipe_learns(tmp_path, monkeypatch):
    """recipes/supervised_fmnist.toml for 200 steps of 64 images (a ninth of an epoch of its
    batch) with every augmentation on: measured 33.2% top-1 on the first 2000 test images (chance
    10%), the last 20 losses 0.92 of the first 20, in 2 minutes on 2 cores."""
    from arvision.finetune import load_finetune_recipe
    require_fashion_mnist()
    monkeypatch.chdir(REPO)
    recipe = load_finetune_recipe(REPO / "recipes" / "supervised_fmnist.toml", [
        "train.steps=200", "train.batch_size=64", "train.warmup_epochs=0.1", "train.log_every=50",
        "finetune.eval_limit=2000"])
    result = finetune(recipe, tmp_path, "supervised_fmnist.toml")
    assert result.scores["top1"] > 25 and result.scores["eval_images"] == 2000
    assert sum(result.train.losses[-20:]) / 20 < 0.95 * sum(result.train.losses[:20]) / 20


def test_a_missing_finetune_checkpoint_is_named(tmp_path, capsys):
    path = tmp_path / "tune.toml"
    path.write_text(tomli_w.dumps(scratch_tables("finetune.checkpoint='gone/checkpoint.pt'")))
    code, _out, err = run_cli(capsys, "run", path, "--out", tmp_path / "out")
    assert code == 2 and "gone/checkpoint.pt: checkpoint not found" in err
    assert len(err.strip().splitlines()) == 1


def test_a_finetune_run_does_not_resume_a_pretraining_run(pretrained, tmp_path, capsys):
    out = tmp_path / "pre"
    shutil.copytree(pretrained.parent, out)
    path = tmp_path / "tune.toml"
    path.write_text(tomli_w.dumps(scratch_tables()))
    code, _out, err = run_cli(capsys, "run", path, "--out", out)
    assert code == 2
    assert "a pretrain checkpoint; this is a finetune run (pass another --out)" in err


def test_the_classifier_writes_attention_out_in_bf16_on_the_cpu(monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    from arvision.finetune.model import create_classifier
    from arvision.model import attention

    torch.manual_seed(0)
    ours = create_classifier(recipe_for(None), 4, "finetune.toml").eval()
    plain = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                              num_classes=4, global_pool=ours.global_pool,
                              fc_norm=ours.global_pool == "avg").eval()
    plain.load_state_dict(ours.state_dict())  # the same parameters under the same names
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ours(images), plain(images))  # fp32: SDPA, as timm's
    with torch.autocast("cpu", torch.bfloat16):
        expected = plain(images).float()  # timm: SDPA in bf16

    def refuse(*args, **kwargs):
        raise AssertionError("SDPA ran in bf16 on the CPU")

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", refuse)
    with torch.autocast("cpu", torch.bfloat16):
        torch.testing.assert_close(ours(images).float(), expected, rtol=0.05, atol=0.05)
