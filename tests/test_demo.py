"""The demo's plan: every ablation row of the spec, on the synthetic domains, scaled for CPU minutes."""

from __future__ import annotations

from pathlib import Path

from ecnreid.demo import DemoConfig, demo_settings, demo_train_config


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
    assert len({c.out for c in settings.values()}) == 4
