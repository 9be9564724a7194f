"""``experiments/camstyle_candidates.py``: it renders exactly the fakes a fidelity score reads, the same bytes
the whole set's command writes (capture through ``prepare --method capture``, StarGAN through ``prepare
--generator``), so a candidate scored on its sample is the method a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_reid_tree
from experiment_scripts import run_experiment
from typer.testing import CliRunner

from camstyle.check import open_camstyle_set
from camstyle.fidelity import draw_real_images
from camstyle.stargan import ModelSpec
from ecnreid.cli import app
from ecnreid.data.camstyle_names import stargan_name
from ecnreid.io import atomic_torch_save

runner = CliRunner()
CAMERAS = 3
SAMPLE = ["--score-images", "4", "--probe-images", "6", "--seed", "1", "--workers", "0"]


def _target(tmp_path: Path) -> Path:
    return make_reid_tree(tmp_path / "market", ids=6, cameras=CAMERAS, per_camera=2, test_ids=1, seed=3)


def _generator(path: Path, cameras: int = CAMERAS) -> Path:
    """A small StarGAN generator with random weights (what it draws does not matter, only that it is used)."""
    torch.manual_seed(0)
    spec = ModelSpec(num_cameras=cameras, image_size=(32, 16), g_conv_dim=8, g_repeat_num=1, d_conv_dim=8,
                     d_repeat_num=2)
    atomic_torch_save({"generator": spec.build_generator().state_dict(), "model": spec.to_dict()}, path)
    return path


def _sample_fakes(folder: Path) -> set[str]:
    """The fakes the score of ``folder`` reads with ``SAMPLE``'s settings."""
    _, originals = draw_real_images(open_camstyle_set(folder), 6, 4, 1)
    assert len(originals) == 4
    return {stargan_name(Path(r.path).stem, c) for r in originals for c in range(CAMERAS) if c != r.camid}


def test_the_sample_is_rendered_as_the_whole_sets_command_renders_it(tmp_path, monkeypatch, capsys):
    target, out = _target(tmp_path), tmp_path / "candidates"
    generator = _generator(tmp_path / "generator.pt")
    run_experiment(monkeypatch, "camstyle_candidates", "--root", str(target), "--dataset", "synthetic", "--out",
                   str(out), "--candidates", "tone_capture", "stargan", "--generator", str(generator), *SAMPLE)
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["candidate"] for r in reports[:2]] == ["tone_capture", "stargan"]
    assert all(r["written"] == 8 and r["images"] == 4 for r in reports[:2])

    whole_set = {"tone_capture": ["--method", "capture", "--seed", "1"], "stargan": ["--generator", str(generator)]}
    for name, method in whole_set.items():
        folder = out / f"camstyle_synthetic_{name}"
        fakes = {p.name for p in folder.glob("*.jpg")}
        assert fakes == _sample_fakes(folder), name
        whole = tmp_path / f"whole_{name}"
        made = runner.invoke(app, ["prepare", "--dataset", "synthetic", "--root", str(target), "--out", str(whole),
                                   "--workers", "0", *method])
        assert made.exit_code == 0, made.output
        assert len(list(whole.glob("*.jpg"))) == 36 * (CAMERAS - 1)
        assert all((folder / f).read_bytes() == (whole / f).read_bytes() for f in fakes), name

    # The sample is what the score reads: it scores without a missing file.
    scored = runner.invoke(app, ["prepare", "--check", str(out / "camstyle_synthetic_stargan"), "--score", "--out",
                                 str(tmp_path / "report"), "--no-pretrained", "--arch", "resnet18", "--height", "64",
                                 "--width", "32", *SAMPLE])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "report" / "fidelity.json").read_text())["sample"]["fakes"] == 8


def test_timing_includes_the_generators_rendering(tmp_path, monkeypatch):
    target, out = _target(tmp_path), tmp_path / "timing"
    run_experiment(monkeypatch, "camstyle_candidates", "--root", str(target), "--dataset", "synthetic", "--out",
                   str(out), "--candidates", "tone", "stargan", "--generator", str(_generator(tmp_path / "g.pt")),
                   "--time-images", "18", "--workers", "0")
    rows = json.loads((out / "timing_18.json").read_text())
    assert [r["method"] for r in rows] == ["colour", "tone", "stargan"]
    assert all(r["images"] == 18 and r["fakes"] == 18 * (CAMERAS - 1) for r in rows)
    assert rows[2]["fit_seconds"] == 0  # a generator is trained by prepare, not fitted here
    assert [p.name for p in out.iterdir()] == ["timing_18.json"]  # the timed fakes are not kept


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("stargan without generator", "the stargan candidate renders with a trained generator: give --generator"),
        ("generator of other cameras", "the generator was trained for 4 cameras"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, case, expected):
    target = _target(tmp_path)
    extra = ["--candidates", "stargan"]
    if case == "generator of other cameras":
        extra += ["--generator", str(_generator(tmp_path / "g4.pt", cameras=4))]
    with pytest.raises(SystemExit) as stop:
        run_experiment(monkeypatch, "camstyle_candidates", "--root", str(target), "--dataset", "synthetic",
                       "--out", str(tmp_path / "out"), *extra, *SAMPLE)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camstyle_candidates.py: ") and expected in lines[0], lines
    assert not (tmp_path / "out").exists()
