import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camstyle.trainer
from camstyle.generate import generate_camstyle, load_generator, to_uint8
from camstyle.prepare import run_prepare
from camstyle.stargan import Generator, ModelSpec
from ecnreid.config import PrepareConfig, RuntimeConfig, StarGANConfig
from ecnreid.data.camstyle_dataset import CamStyleTargetDataset, camstyle_coverage
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.io import atomic_torch_save


class CameraColour(torch.nn.Module):
    """A stand-in generator whose output tells which image and camera it was asked for.

    Red encodes the target camera; green copies the input's green (each test image has its own).
    """

    def __init__(self, num_cameras: int) -> None:
        super().__init__()
        self.num_cameras = num_cameras

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(images, -1.0)
        out[:, 0] = (cameras.float() / (self.num_cameras - 1) * 2 - 1)[:, None, None]
        out[:, 1] = images[:, 1]
        return out


def _red_level(camera: int, num_cameras: int) -> float:
    return camera / (num_cameras - 1) * 255


def _market_tree(root: Path, cameras: list[int], sizes: list[tuple[int, int]] | None = None) -> list[ImageRecord]:
    """Solid images named like Market-1501; image i has green 40 + 60 i (its fingerprint)."""
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, camera in enumerate(cameras):
        size = sizes[i] if sizes else (16, 32)
        path = folder / f"{i + 1:04d}_c{camera + 1}s1_{i:06d}_00.jpg"
        Image.new("RGB", size, (128, 40 + 60 * i, 128)).save(path, quality=95)
        records.append(ImageRecord(str(path), i + 1, camera))
    return records


def test_to_uint8_maps_the_tanh_range():
    values = torch.tensor([-1.5, -1.0, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8(values)[0, 0, :, 0].tolist() == [0, 0, 128, 255]


def test_every_other_camera_is_written_at_the_original_size(tmp_path):
    sizes = [(16, 32), (20, 40), (18, 36)]
    records = _market_tree(tmp_path, [0, 1, 2], sizes)
    out = tmp_path / "cs"
    counts = generate_camstyle(CameraColour(3), records, 3, out, image_size=(32, 16), batch_size=4, workers=0)
    assert (counts.written, counts.skipped) == (6, 0)
    expected = {f"{Path(r.path).stem}_fake_{c + 1}.jpg" for r in records for c in range(3) if c != r.camid}
    assert {p.name for p in out.iterdir()} == expected
    for i, record in enumerate(records):
        for camera in range(3):
            if camera == record.camid:
                continue
            with Image.open(out / f"{Path(record.path).stem}_fake_{camera + 1}.jpg") as image:
                assert image.size == sizes[i]
                pixel = np.asarray(image.convert("RGB"), dtype=float)[5, 5]
            assert abs(pixel[0] - _red_level(camera, 3)) <= 4  # the requested camera
            assert abs(pixel[1] - (40 + 60 * i)) <= 4  # the requested image
    # What was written is exactly what the camera-invariance dataset looks for.
    dataset = CamStyleTargetDataset(records, out, 3, None)
    assert dataset.scheme == "stargan"
    assert all(dataset.style_path(i, c).exists() for i in range(3) for c in range(3))
    assert camstyle_coverage(records, out, 3).complete


def test_fifteen_camera_names(tmp_path):
    records = _market_tree(tmp_path, [0, 14])
    counts = generate_camstyle(CameraColour(15), records, 15, tmp_path / "cs", image_size=(32, 16), workers=0)
    assert counts.written == 2 * 14
    names = {p.name for p in (tmp_path / "cs").iterdir()}
    first, last = Path(records[0].path).stem, Path(records[1].path).stem
    assert f"{first}_fake_15.jpg" in names and f"{first}_fake_1.jpg" not in names
    assert f"{last}_fake_1.jpg" in names and f"{last}_fake_15.jpg" not in names
    assert f"{first}_fake_10.jpg" in names and f"{last}_fake_10.jpg" in names


def test_rerun_writes_only_what_is_missing(tmp_path):
    records = _market_tree(tmp_path, [0, 1, 2, 0])
    out = tmp_path / "cs"
    assert generate_camstyle(CameraColour(3), records, 3, out, image_size=(32, 16), workers=0).written == 8
    files = sorted(out.iterdir())
    deleted = [files[1], files[6]]
    for path in deleted:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    counts = generate_camstyle(CameraColour(3), records, 3, out, image_size=(32, 16), batch_size=2, workers=0)
    assert (counts.written, counts.skipped) == (2, 6)
    assert all(p.exists() for p in deleted)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    assert generate_camstyle(CameraColour(3), records, 3, out, image_size=(32, 16), workers=0).written == 0


def test_real_generator_and_camera_mismatch(tmp_path):
    records = _market_tree(tmp_path, [0, 1], sizes=[(24, 48), (16, 32)])
    generator = Generator(2, conv_dim=8, repeat_num=1)
    counts = generate_camstyle(generator, records, 2, tmp_path / "cs", image_size=(32, 16), workers=0)
    assert counts.written == 2
    with Image.open(tmp_path / "cs" / f"{Path(records[0].path).stem}_fake_2.jpg") as image:
        assert image.size == (24, 48)
    with pytest.raises(ValueError, match="2 cameras"):  # callers check the user's generator first
        generate_camstyle(generator, records, 3, tmp_path / "cs", image_size=(32, 16), workers=0)


def test_load_generator(tmp_path):
    spec = ModelSpec(num_cameras=4, image_size=(32, 16), g_conv_dim=8, g_repeat_num=1, d_conv_dim=8, d_repeat_num=2)
    generator = spec.build_generator()
    atomic_torch_save({"generator": generator.state_dict(), "model": spec.to_dict()}, tmp_path / "g.pt")
    loaded, loaded_spec = load_generator(tmp_path / "g.pt")
    assert loaded_spec == spec
    assert all(
        torch.equal(a, b) for a, b in zip(generator.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    atomic_torch_save({"weights": 1}, tmp_path / "foreign.pt")
    wrong = {"generator": generator.state_dict(), "model": {**spec.to_dict(), "g_conv_dim": 4}}
    atomic_torch_save(wrong, tmp_path / "wrong.pt")
    for name, message in [
        ("absent.pt", "StarGAN generator checkpoint not found"),
        ("bad.pt", "not a torch checkpoint file"),
        ("foreign.pt", "not a StarGAN generator checkpoint"),
        ("wrong.pt", "do not match"),
        (".", "is a folder"),
    ]:
        with pytest.raises(EcnreidError, match=message) as error:
            load_generator(tmp_path / name)
        assert "\n" not in str(error.value)


TINY_STARGAN = dict(
    iters=2,
    image_size=(32, 16),
    batch_size=2,
    sample_every=0,
    checkpoint_every=0,
    conv_dim=8,
    g_repeat_num=1,
    d_repeat_num=2,
)
STARGAN_FIELDS = {f.name for f in dataclasses.fields(StarGANConfig)}


def _tiny_prepare(data_root: Path, *, resume: bool = False, **overrides) -> PrepareConfig:
    """A StarGAN prepare of tiny networks on the CPU; ``overrides`` go to the StarGAN section or the top."""
    stargan = {**TINY_STARGAN, **{k: v for k, v in overrides.items() if k in STARGAN_FIELDS}}
    top = {k: v for k, v in overrides.items() if k not in STARGAN_FIELDS}
    return PrepareConfig(
        **{"dataset": "market1501", "root": data_root, "workers": 0, **top},
        stargan=StarGANConfig(**stargan),
        runtime=RuntimeConfig(device="cpu", resume=resume),
    )


def _prepare(data_root: Path, **overrides) -> dict:
    return run_prepare(_tiny_prepare(data_root, **overrides), progress=False)


def test_prepare_trains_then_generates_and_reuses_the_generator(tmp_path):
    records = _market_tree(tmp_path / "data", [0, 1, 2, 1])
    summary = _prepare(tmp_path / "data")
    out = tmp_path / "data" / "bounding_box_train_camstyle"
    assert (summary["images"], summary["cameras"], summary["written"], summary["skipped"]) == (4, 3, 8, 0)
    assert summary["iterations"] == 2
    assert json.loads((out / "prepare.json").read_text())["written"] == 8
    generator_path = Path(summary["paths"]["generator"])
    assert generator_path.parent == tmp_path / "data" / "bounding_box_train_camstyle_stargan"
    # Rerunning the same command (say after an interrupted generation) reuses the finished generator.
    for path in sorted(out.glob("*.jpg"))[:3]:
        path.unlink()
    rerun = _prepare(tmp_path / "data")
    assert (rerun["written"], rerun["skipped"]) == (3, 5) and "iterations" not in rerun
    # Reusing the trained generator for a fresh folder writes the whole set again, skipping nothing.
    again = _prepare(tmp_path / "data", generator=generator_path, out=tmp_path / "again")
    assert (again["written"], again["skipped"]) == (8, 0)
    assert {p.name for p in (tmp_path / "again").glob("*.jpg")} == {p.name for p in out.glob("*.jpg")}
    # A 2-camera dataset cannot use a 3-camera generator.
    _market_tree(tmp_path / "two", [0, 1])
    with pytest.raises(EcnreidError, match="trained for 3 cameras") as error:
        _prepare(tmp_path / "two", generator=generator_path)
    assert "\n" not in str(error.value)
    # Nor reuse a work folder whose finished generator has 3 cameras.
    with pytest.raises(EcnreidError, match="trained for 3 cameras.*choose another --work-dir") as error:
        _prepare(tmp_path / "two", work_dir=generator_path.parent)
    assert str(error.value).startswith(str(generator_path)) and "\n" not in str(error.value)
    assert len(records) == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"root": Path("/nonexistent/dataset")}, "does not exist"),
        ({"generator": Path("/nonexistent/g.pt")}, "not found"),
        ({"method": "cyclegan"}, "--method cyclegan: expected one of stargan, colour"),
        ({"image_size": (30, 16)}, "multiples of 4"),
        ({"pseudo_cameras": 1}, "at least 2"),
        ({"lr": 0.0}, "--lr 0.0: must be positive"),
        ({"n_critic": 0}, "--n-critic 0: must be at least 1"),
        ({"lambda_rec": -1.0}, "--lambda-rec -1.0: must not be negative"),
    ],
)
def test_prepare_bad_input_is_a_one_line_error(tmp_path, overrides, message):
    _market_tree(tmp_path, [0, 1])
    with pytest.raises(EcnreidError, match=message) as error:
        _prepare(tmp_path, **overrides)
    assert "\n" not in str(error.value)


def test_prepare_unreadable_generator_and_single_camera(tmp_path):
    _market_tree(tmp_path, [0, 0, 0])
    (tmp_path / "g.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(EcnreidError, match="one camera"):
        _prepare(tmp_path)
    _market_tree(tmp_path / "ok", [0, 1])
    with pytest.raises(EcnreidError, match="not a torch checkpoint file.*expected a StarGAN generator checkpoint"):
        _prepare(tmp_path / "ok", generator=tmp_path / "g.pt")


def _interrupted_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]


def test_prepare_interrupted_in_training_suggests_resume_and_re_raises(tmp_path, monkeypatch, capsys):
    _market_tree(tmp_path / "data", [0, 1, 2, 1])
    real_step, calls = camstyle.trainer.critic_step, []

    def stop_on_the_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(camstyle.trainer, "critic_step", stop_on_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "data", iters=10)
    work = tmp_path / "data" / "bounding_box_train_camstyle_stargan"
    # One line (the trainer's, not prepare's too): where the checkpoint is, and --resume.
    (line,) = _interrupted_lines(capsys)
    assert f"state saved to {work / 'checkpoint.pt'}" in line and "rerun with --resume" in line
    assert torch.load(work / "checkpoint.pt", weights_only=False)["iteration"] == 1
    monkeypatch.setattr(camstyle.trainer, "critic_step", real_step)
    summary = _prepare(tmp_path / "data", iters=3, resume=True)
    assert summary["iterations"] == 3 and summary["written"] == 8


def test_prepare_interrupted_during_generation_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    _market_tree(tmp_path / "data", [0, 1, 2, 1])
    generator_path = Path(_prepare(tmp_path / "data")["paths"]["generator"])
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("camstyle.prepare.generate_camstyle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "data", generator=generator_path, out=tmp_path / "cut")
    assert not (tmp_path / "cut" / "prepare.json").exists()
    # Training was not cut (here it never ran): rerunning the same options continues; --resume has no part.
    (line,) = _interrupted_lines(capsys)
    assert "rerun with the same options" in line and "--resume" not in line and "state saved" not in line
