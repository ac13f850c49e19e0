"""The training-step and scaling benchmarks run end to end at a tiny geometry (no timing
assertions)."""

import importlib.util
import sys
from dataclasses import asdict, replace

import pytest
import timm
import torch

from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    path = REPO / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny(bench):
    # 32 px, patch 8: a 4x4 student grid in 2x2 segments; the ViT-H-14 teacher at 56 px: 4x4x1024.
    return bench.Geometry(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          teacher_size=56, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def test_recipe_has_the_digpt_layout(bench):
    blueprint = bench.make_blueprint(bench.Geometry())
    assert blueprint.grid == (14, 14) and blueprint.tokens.grid == (16, 16)
    assert blueprint.tokens.dim == 1024 and blueprint.tokens.cls
    assert blueprint.encoder_tokens == 148 and blueprint.targets_per_decoder == 193


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_step_gives_a_row(bench, precision):
    row = bench.run_config(bench.Config(precision, "eager", 2), tiny(bench), steps=1, warmup=1,
                           matmul_n=128)
    assert row["status"] == "ok", row.get("error")
    assert row["images_per_s"] > 0 and row["flops_per_step"] > 0 and row["achieved_tflops"] > 0
    assert row["matmul_tflops"] > 0 and row["fraction_of_matmul"] > 0
    assert row["peak_memory_bytes"] is not None and row["memory_kind"]


def test_a_failing_configuration_is_reported_in_its_row(bench):
    # 30 px in patches of 16: a 1x1 grid, which 2x2 segments cannot split
    row = bench.run_config(bench.Config("fp32", "eager", 2), bench.Geometry(img_size=30),
                           steps=1, warmup=0)
    assert row["status"] == "failed"
    assert row["error"].startswith("RecipeError: ") and "cannot be split into 2x2" in row["error"]
    assert (row["precision"], row["mode"], row["batch"]) == ("fp32", "eager", 2)


def test_table_lists_every_row(bench):
    ok = bench.run_config(bench.Config("fp32", "eager", 2), tiny(bench), steps=1, warmup=0,
                          matmul_n=128)
    failed = {"precision": "bf16", "mode": "compile", "batch": 2, "status": "failed",
              "error": "SomeError: boom\nmore"}
    table = bench.format_table([ok, failed]).splitlines()
    assert len(table) == 4 and "| fp32 | eager | 2 |" in table[2] and "SomeError: boom" in table[3]


def test_isolated_run_returns_the_worker_row(bench):
    spec = {"config": asdict(bench.Config("fp32", "eager", 2)), "geometry": asdict(tiny(bench)),
            "steps": 1, "warmup": 0, "device": "cpu", "flops": None, "threads": 1, "matmul_n": 128}
    row = bench.run_isolated(spec, compile_budget=60, timeout=300)
    assert row["status"] == "ok", row.get("error")
    assert row["images_per_s"] > 0 and row["flops_per_step"] > 0


def released_tiny(bench):
    # The released layout at a tiny width: depth 12 (taps 6/8/10/12), two equal decoders.
    return bench.Geometry(img_size=32, patch_size=8, embed_dim=16, depth=12, num_heads=2,
                          teacher_size=56, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def test_reference_mode_gives_a_row(bench):
    row = bench.run_config(bench.Config("fp32", "reference", 2), released_tiny(bench), steps=1,
                           warmup=1, matmul_n=128)
    assert row["status"] == "ok", row.get("error")
    assert row["images_per_s"] > 0 and "compile_s" not in row


def test_released_step_with_arvisions_allocator_runs_in_its_own_process(bench):
    # reference-reuse changes the process's C allocator: only ever in a worker process
    spec = {"config": asdict(bench.Config("fp32", "reference-reuse", 2)),
            "geometry": asdict(released_tiny(bench)), "steps": 2, "warmup": 1, "device": "cpu",
            "flops": None, "threads": 1, "matmul_n": 128}
    row = bench.run_isolated(spec, compile_budget=60, timeout=300)
    assert row["status"] == "ok", row.get("error")
    assert row["page_faults_per_step"] >= 0


def test_comparison_sets_arvision_beside_each_released_step(bench):
    def row(mode, images_per_s, peak, faults, precision="bf16"):
        return {"precision": precision, "batch": 8, "mode": mode, "status": "ok",
                "images_per_s": images_per_s, "peak_memory_bytes": peak * 2**30,
                "page_faults_per_step": faults}

    rows = [row("eager", 8.0, 1.5, 1), row("reference", 6.0, 2.0, 130000),
            row("reference-reuse", 7.0, 2.0, 2), row("compile", 9.0, 1.0, 0),
            row("recompute", 7.0, 1.2, 3),
            row("eager", 2.0, 1.0, 1, "fp32"),  # no released step measured: no line
            {"precision": "bf16", "batch": 32, "mode": "reference", "status": "failed"}]
    table = bench.format_comparison(rows).splitlines()
    assert len(table) == 6  # eager and recompute against both released steps; not compile
    assert table[2] == ("| bf16 | 8 | eager | reference | 8.00 | 6.00 | 1.33 |  | 1.50 GiB | "
                        "2.00 GiB | 0.75 | 1 / 130000 |")
    assert table[3].startswith("| bf16 | 8 | eager | reference-reuse | 8.00 | 7.00 | 1.14 |")
    assert table[4].startswith("| bf16 | 8 | recompute | reference | 7.00 | 6.00 | 1.17 |  | "
                               "1.20 GiB | 2.00 GiB | 0.60 |")


def test_rounds_combine_into_medians_and_ratios_per_round(bench):
    def run(mode, round_index, images_per_s, status="ok"):
        return {"precision": "bf16", "batch": 8, "mode": mode, "status": status,
                "round": round_index, "images_per_s": images_per_s, "step_ms": 8e3 / images_per_s,
                "peak_memory_bytes": 2**30, "page_faults_per_step": 1, "achieved_tflops": 0.5,
                "fraction_of_matmul": 0.6}

    # the machine slows down in round 1: each round's ratio is still 1.25
    runs = [run("eager", 0, 10.0), run("reference", 0, 8.0),
            run("eager", 1, 5.0), run("reference", 1, 4.0),
            run("eager", 2, 12.5), run("reference", 2, 10.0),
            run("recompute", 0, 1.0, "failed"), run("recompute", 1, 1.0, "failed")]
    rows = {row["mode"]: row for row in bench.combine_rounds(runs)}
    assert rows["eager"]["images_per_s"] == 10.0 and rows["eager"]["rounds"] == 3
    assert rows["recompute"]["status"] == "failed"
    line = bench.format_comparison(list(rows.values())).splitlines()[2]
    assert line.startswith("| bf16 | 8 | eager | reference | 10.00 | 8.00 | 1.25 | 1.25-1.25 |")


@pytest.mark.parametrize("mode", ["recompute", "checkpoint"])
def test_memory_modes_train_with_their_settings(bench, mode, monkeypatch):
    from arvision.model import ARModel

    settings = []
    recompute = ARModel.recompute_in_backward
    monkeypatch.setattr(ARModel, "recompute_in_backward", lambda model, kinds, blocks=False: (
        settings.append((tuple(kinds), blocks)), recompute(model, kinds, blocks))[1])
    row = bench.run_config(bench.Config("bf16", mode, 2), tiny(bench), steps=1, warmup=0,
                           matmul_n=128)
    assert row["status"] == "ok", row.get("error")
    expected = {"recompute": (("mlp_activation", "attention_weights"), False),
                "checkpoint": ((), True)}[mode]
    assert settings == [expected]


def test_the_released_model_converts_to_the_benchmarked_one(bench):
    """The reference mode times the model arvision's rows time: the released model's weights,
    converted, load into the benchmark's ARModel and give its losses."""
    from arvision.build import build_model
    from arvision.convert import convert_digpt_official
    from reference_step import reference_model, reference_targets

    blueprint = bench.make_blueprint(released_tiny(bench))
    torch.manual_seed(0)
    released = reference_model(blueprint).eval()
    model = build_model(blueprint, with_tokenizer=False).eval()
    model.load_state_dict(convert_digpt_official(released.state_dict(), blueprint.recipe))
    images, tokens = bench.make_inputs(blueprint, 2, "cpu")
    perm = torch.stack([torch.randperm(4) for _ in range(2)])
    mean, std = (torch.tensor(v)[:, None, None] for v in (bench.IMAGENET_MEAN, bench.IMAGENET_STD))
    with torch.no_grad():
        generative, discriminative = released((images - mean) / std,
                                              reference_targets(tokens.tokens, tokens.cls), perm)
        parts = model(images, tokens=tokens, order=perm).parts
    torch.testing.assert_close(parts["generative"], generative, rtol=0, atol=1e-5)
    torch.testing.assert_close(parts["discriminative"], discriminative, rtol=0, atol=1e-5)


def test_scaling_points_change_one_factor_at_a_time(bench):
    import scaling

    base = bench.Geometry()
    found = scaling.points(base, (8, 32, 128))
    assert [p.factor for p in found] == ["base", "batch", "batch", "encoder", "encoder",
                                         "segments", "teacher", "teacher"]
    for point in found[1:]:
        changed = {k for k, v in asdict(point.geometry).items() if asdict(base)[k] != v}
        changed |= {"batch"} if point.batch != 8 else set()
        expected = {"batch": {"batch"}, "encoder": {"encoder"},
                    "segments": {"segments", "teacher_size"},  # both grids must divide
                    "teacher": {"teacher", "teacher_source"} | (
                        {"teacher_online"} if point.geometry.teacher_online else set())}
        assert changed == expected[point.factor], point
    assert [p.encoder for p in found[3:5]] == ["Small", "Base"]
    assert [p.targets for p in found[-2:]] == ["vit_huge_patch14_224 cache",
                                               "vit_huge_patch14_224 online"]
    for point in found:  # every point is a recipe arvision accepts (4x4 segments of 14x14 was not)
        assert scaling.estimated_peak(point.geometry, point.batch, "bf16", "cpu") > 0


def test_scaling_rows_hold_the_estimate_beside_the_measurement(bench):
    import scaling

    geometry = replace(tiny(bench), teacher="vit_tiny_patch16_224", teacher_source="timm",
                             teacher_size=64)  # 4x4 x 192 tokens
    estimate = [scaling.estimated_peak(geometry, batch, "fp32", "cpu") for batch in (2, 4, 6)]
    assert estimate[2] - estimate[1] == estimate[1] - estimate[0] > 0  # linear in the batch
    rows = [scaling.measure_point(scaling.Point(factor, replace(geometry, teacher_online=on),
                                                2), "fp32", "cpu", 1, 0, 1, 300)
            for factor, on in (("base", False), ("teacher", True))]
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert row["estimated_peak_bytes"] == estimate[0] and row["measured_over_estimated"] > 0
        assert row["allocated_over_estimated"] > 0
    assert rows[1]["targets"] == "vit_tiny_patch16_224 online"
    teacher_bytes = 4 * sum(p.numel() for p in timm.create_model(  # headless, as the tokenizer
        "vit_tiny_patch16_224", img_size=64, num_classes=0).parameters())
    assert rows[1]["allocated_peak_bytes"] - rows[0]["allocated_peak_bytes"] > teacher_bytes
    table = scaling.format_table(rows).splitlines()
    assert len(table) == 4 and "| teacher | Tiny | 2 | 2x2 | vit_tiny_patch16_224 online |" in table[3]


@pytest.fixture(scope="module")
def profiler(bench):
    path = REPO / "benchmarks" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profiles_of_both_steps_sit_side_by_side(bench, profiler):
    sides = {mode: profiler.profile_config(bench.Config("fp32", mode, 2), steps=1, warmup=1,
                                           device="cpu", geometry=released_tiny(bench))
             for mode in profiler.SIDES}
    for side in sides.values():
        names = [row["name"] for row in side["operators"]]
        assert "aten::addmm" in names or "aten::mm" in names  # the linear layers ran, profiled
        assert side["step_self_cpu_ms"] == pytest.approx(
            sum(row["self_cpu_ms"] for row in side["operators"]))
    # the released step draws its orders with randperm; arvision's come from per-sample seeds
    assert any(row["name"] == "aten::randperm" for row in sides["reference"]["operators"])
    table = profiler.format_side_by_side(sides["eager"], sides["reference"], top=5).splitlines()
    assert table[0].startswith("| operator | arvision ms/step")
    assert len(table) >= 2 + 5 + 1 and table[-1].startswith("| **total self time**")


@pytest.mark.parametrize("rounds", ["0", "-1", "two"])
def test_rounds_must_be_a_whole_number_of_at_least_one(bench, rounds, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", rounds])
    assert f"argument --rounds: expected a whole number >= 1, got '{rounds}'" in \
        capsys.readouterr().err
