"""The demo's plan: every ablation row of the spec, on the synthetic domains, scaled for CPU minutes.

None of these tests trains: they check the configs the demo would run and the data it would draw.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ecnreid.config import (
    DEMO_SOURCE,
    DEMO_TARGET,
    DemoConfig,
    DomainSpec,
    EvaluationConfig,
    InputConfig,
    ModelConfig,
    OptimConfig,
)
from ecnreid.data.synthetic import SOURCE_BACKGROUNDS, generate_synthetic
from ecnreid.demo import (
    camera_invariance_gap,
    demo_eval_config,
    demo_prepare_config,
    demo_settings,
    demo_train_config,
)


def test_demo_trains_the_ablation_rows_on_the_synthetic_domains(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path, epochs=9)
    settings = {name: demo_train_config(config, tmp_path / "data", name, o) for name, o in demo_settings().items()}
    assert {name: c.ecn.setting_name for name, c in settings.items()} == {
        "source only": "source only",
        "+E": "+E",
        "+E+N": "+E+N",
        "+E+C+N": "+E+C+N",
    }
    for train_config in settings.values():
        assert train_config.domains.source == train_config.domains.target == "synthetic"
        assert train_config.domains.source_root == tmp_path / "data" / "source"
        assert train_config.domains.target_root == tmp_path / "data" / "target"
        optim, ecn = train_config.optim, train_config.ecn
        assert optim.epochs == 9 and optim.lr_steps == (6,) and ecn.neighbour_start_epoch == 3
        assert train_config.runtime.resume  # a killed demo continues where it stopped
        assert optim.backbone_lr_mult == 1.0 and optim.lr == 0.01
        # Offline by design: random weights asked for explicitly, never a silent download.
        assert train_config.model.pretrained is False and train_config.model.weights is None
    assert len({c.out for c in settings.values()}) == 4


def test_demo_train_config_is_the_published_one_scaled_down(tmp_path: Path) -> None:
    """Every setting of a row: the demo's own, and the published default everywhere else."""
    config = DemoConfig(out=tmp_path, epochs=10, seed=3, device="cpu")
    row = demo_train_config(config, tmp_path / "data", "+E+N", demo_settings()["+E+N"])
    assert row.out == tmp_path / "runs" / "plus_Eplus_N"  # the folder names of earlier demos, which resume
    assert row.method == "ecn" and row.domains.target_batch_size is None and row.domains.camstyle_dir is None
    assert row.input == InputConfig(height=64, width=32, batch_size=32, workers=0)
    assert row.model == ModelConfig(arch="resnet18", weights=None, pretrained=False, frozen_stages=1)
    assert row.optim == OptimConfig(epochs=10, lr=0.01, backbone_lr_mult=1.0, lr_steps=(6,))
    assert (row.ecn.k, row.ecn.neighbour_start_epoch, row.ecn.use_camera, row.ecn.use_neighbour) == (3, 3, False, True)
    assert (row.ecn.lam, row.ecn.beta, row.ecn.alpha, row.ecn.source_only) == (0.3, 0.05, 0.01, False)
    assert row.evaluation == EvaluationConfig(every=0)
    assert (row.runtime.seed, row.runtime.device, row.runtime.resume) == (3, "cpu", True)
    assert not row.dg.any
    # Only the ecn section differs between the rows.
    other = demo_train_config(config, tmp_path / "data", "+E+N", demo_settings()["source only"])
    assert dataclasses.replace(other, ecn=row.ecn) == row
    assert other.ecn == dataclasses.replace(row.ecn, source_only=True, use_camera=True)
    # A local ImageNet state_dict: the published learning rate and frozen stages.
    weighted = demo_train_config(dataclasses.replace(config, weights=tmp_path / "w.pt"), tmp_path, "+E", {})
    assert weighted.model.pretrained and weighted.model.frozen_stages == 3 and weighted.optim.lr == 0.1


def test_demo_prepares_and_evaluates_on_the_synthetic_domains(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path, seed=2, device="cpu")
    prepare = demo_prepare_config(config, tmp_path / "data")
    assert (prepare.dataset, prepare.root, prepare.method) == ("synthetic", tmp_path / "data" / "target", "colour")
    assert (prepare.runtime.seed, prepare.runtime.device) == (2, "cpu")
    assert prepare.workers == config.workers == 0  # tiny images: no loader processes, as in training
    evaluation = demo_eval_config(config, tmp_path / "data")
    assert (evaluation.dataset, evaluation.root) == ("synthetic", tmp_path / "data" / "source")
    assert evaluation.checkpoint == tmp_path / "runs" / "source_only" / "last.pt"
    assert evaluation.out == tmp_path / "eval_source_only_on_source"
    assert (evaluation.input.height, evaluation.input.width, evaluation.input.workers) == (64, 32, 0)
    assert evaluation.input.batch_size == 128 and evaluation.runtime.device == "cpu"


def test_demo_summary_reports_the_gap_of_ecn_over_source_only() -> None:
    results = {"source only": {"rank1": 24.0, "mAP": 17.5}, "+E+C+N": {"rank1": 43.25, "mAP": 33.5}}
    assert camera_invariance_gap(results) == {"rank1": 19.25, "mAP": 16.0}


def _tiny(spec: DomainSpec, cameras: int) -> DomainSpec:
    return dataclasses.replace(spec, layout=dataclasses.replace(spec.layout, cameras=cameras, train_ids=3, test_ids=2))


def test_demo_data_shifts_fashion_between_the_domains(tmp_path: Path) -> None:
    source, target = _tiny(DEMO_SOURCE, 2), _tiny(DEMO_TARGET, 3)
    meta = generate_synthetic(tmp_path / "data", source=source, target=target, seed=DemoConfig().seed)
    params = meta["params"]
    # Source people dress in black, white and grey; target people in colours.
    assert params["source"]["person"]["achromatic"] == 1.0 and params["target"]["person"]["achromatic"] == 0.0
    assert params["target"]["layout"]["tracks"] and not params["source"]["layout"]["tracks"]
    assert params["target"]["layout"]["train_images_per_camera"] == 4
    assert params["source"]["layout"]["train_images_per_camera"] == 2
    assert params["seed"] == 0
    target_cameras = meta["domains"]["target"]["cameras"]
    # No colour cast in the target's cameras, and plain scenes behind the people.
    assert all(camera["gains"] == [1.0, 1.0, 1.0] for camera in target_cameras)
    assert {camera["background"]["kind"] for camera in target_cameras} <= set(SOURCE_BACKGROUNDS)
    # The full-size demo domains: 60 training and 40 test ids on 4 and 5 cameras.
    assert (DEMO_SOURCE.layout.cameras, DEMO_TARGET.layout.cameras) == (4, 5)
    assert DEMO_SOURCE.layout.train_ids == DEMO_TARGET.layout.train_ids == 60
    assert DEMO_TARGET.camera.strength == 0.4 and not DEMO_TARGET.camera.textured


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_tiny_domains(tmp_path: Path) -> None:
    """generate → prepare → train the four rows → eval, at 32x16 for one epoch on a few ids: every row trains,
    and the table's numbers are the runs' own final results."""
    import json

    from ecnreid.data.datasets import read_dataset
    from ecnreid.demo import run_demo

    config = DemoConfig(
        out=tmp_path / "demo", epochs=1, device="cpu", height=32, width=16, batch_size=8,
        source=_tiny(DEMO_SOURCE, 2), target=_tiny(DEMO_TARGET, 3),
    )
    report = run_demo(config)
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["results"] == report["results"]
    rows = {"source only": "source_only", "+E": "plus_E", "+E+N": "plus_Eplus_N", "+E+C+N": "plus_Eplus_Cplus_N"}
    for name, folder in rows.items():
        metrics = json.loads((tmp_path / "demo" / "runs" / folder / "metrics.json").read_text())
        assert metrics["setting"] == name and metrics["final"]["epoch"] == 1
        assert report["results"][name] == metrics["final"]
    camstyle = json.loads((tmp_path / "demo" / "runs" / "plus_Eplus_Cplus_N" / "metrics.json").read_text())["camstyle"]
    target_train = read_dataset("synthetic", tmp_path / "demo" / "data" / "target", require_test=False).train
    assert camstyle["coverage"] == 1.0 and camstyle["expected"] == 2 * len(target_train)  # 2 other cameras each
    on_source = json.loads((tmp_path / "demo" / "eval_source_only_on_source" / "metrics.json").read_text())
    assert report["results"]["source only, on the source test split"] == on_source["results"]["plain"]
    results = report["results"]
    assert report["gap_ecn_over_source_only"]["rank1"] == pytest.approx(
        results["+E+C+N"]["rank1"] - results["source only"]["rank1"]
    )
