"""The demo's plan: every ablation row of the spec, on the synthetic domains, scaled for CPU minutes."""

from __future__ import annotations

from pathlib import Path

from ecnreid.data.synthetic import SOURCE_BACKGROUNDS, generate_synthetic
from ecnreid.demo import DemoConfig, camera_invariance_gap, demo_data_params, demo_settings, demo_train_config


def test_demo_trains_the_ablation_rows_on_the_synthetic_domains(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path, epochs=9)
    settings = {name: demo_train_config(config, tmp_path / "data", name, o) for name, o in demo_settings().items()}
    assert {name: c.setting_name for name, c in settings.items()} == {
        "source only": "source only",
        "+E": "+E",
        "+E+N": "+E+N",
        "+E+C+N": "+E+C+N",
    }
    for train_config in settings.values():
        assert train_config.source_root == tmp_path / "data" / "source"
        assert train_config.target_root == tmp_path / "data" / "target"
        assert train_config.epochs == 9 and train_config.lr_step == 6 and train_config.neighbour_start_epoch == 3
        assert train_config.resume  # a killed demo continues where it stopped
        assert train_config.backbone_lr_mult == 1.0 and train_config.lr == 0.01
        # Offline by design: random weights asked for explicitly, never a silent download.
        assert train_config.model.pretrained is False and train_config.model.weights is None
    assert len({c.out for c in settings.values()}) == 4


def test_demo_summary_reports_the_gap_of_ecn_over_source_only() -> None:
    results = {"source only": {"rank1": 24.0, "mAP": 17.5}, "+E+C+N": {"rank1": 43.25, "mAP": 33.5}}
    assert camera_invariance_gap(results) == {"rank1": 19.25, "mAP": 16.0}


def test_demo_data_shifts_fashion_between_the_domains(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path)
    tiny = {"train_ids": 3, "test_ids": 2, "source_cameras": 2, "target_cameras": 3}
    meta = generate_synthetic(tmp_path / "data", **demo_data_params(config), **tiny)
    params = meta["params"]
    # Source people dress in black, white and grey; target people in colours.
    assert params["source_achromatic"] == 1.0 and params["target_achromatic"] == 0.0
    assert params["target_tracks"] and params["seed"] == config.seed
    assert params["target_train_images_per_camera"] == 4 and params["train_images_per_camera"] == 2
    target_cameras = meta["domains"]["target"]["cameras"]
    # No colour cast in the target's cameras, and plain scenes behind the people.
    assert all(camera["gains"] == [1.0, 1.0, 1.0] for camera in target_cameras)
    assert {camera["background"]["kind"] for camera in target_cameras} <= set(SOURCE_BACKGROUNDS)
    train_config = demo_train_config(config, tmp_path / "data", "+E+N", demo_settings()["+E+N"])
    assert train_config.k == config.k == 3
