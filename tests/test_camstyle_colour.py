from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camstyle.colour import (
    camera_styles,
    channel_stats,
    generate_colour_camstyle,
    lab_to_rgb,
    rgb_to_lab,
    to_float_rgb,
    transfer_lab,
)
from camstyle.prepare import run_prepare
from ecnreid.config import PrepareConfig, RuntimeConfig
from ecnreid.data.records import ImageRecord


def _pixel(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),  # published sRGB → CIELAB (D65) values
        ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
        ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ],
)
def test_rgb_to_lab_reference_colours(rgb, lab):
    assert rgb_to_lab(_pixel(rgb)).flatten().tolist() == pytest.approx(lab, abs=0.02)


def test_lab_round_trip():
    rgb = torch.rand(2, 3, 8, 4)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)


def test_transfer_sets_each_channel_to_the_target_statistics():
    lab = rgb_to_lab(torch.rand(2, 3, 16, 8))
    target_mean = torch.tensor([[40.0, 10.0, -5.0], [70.0, -8.0, 20.0]])
    target_std = torch.tensor([[10.0, 4.0, 6.0], [15.0, 2.0, 3.0]])
    out = transfer_lab(lab, target_mean, target_std)
    assert out.shape == (2, 2, 3, 16, 8)
    mean, std = channel_stats(out)
    assert torch.allclose(mean, target_mean.expand(2, -1, -1), atol=1e-3)
    assert torch.allclose(std, target_std.expand(2, -1, -1), atol=1e-3)
    # The image's own structure is kept: the standardised channels are unchanged.
    own_mean, own_std = channel_stats(lab)
    standard = (lab - own_mean[..., None, None]) / own_std[..., None, None]
    back = (out[:, 1] - target_mean[1][:, None, None]) / target_std[1][:, None, None]
    assert torch.allclose(back, standard, atol=1e-3)


def _two_tone(path: Path, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> None:
    pixels = np.zeros((8, 4, 3), dtype=np.uint8)
    pixels[:4], pixels[4:] = top, bottom
    Image.fromarray(pixels).save(path)  # PNG: exact pixels


def _lab_of(colour: tuple[int, int, int]) -> torch.Tensor:
    return rgb_to_lab(_pixel(tuple(c / 255 for c in colour))).flatten()


def test_camera_style_is_the_average_of_image_statistics(tmp_path):
    images = {  # camera: list of (top, bottom)
        0: [((200, 50, 50), (100, 20, 20)), ((180, 90, 40), (220, 120, 60))],
        1: [((30, 60, 200), (60, 90, 230))],
    }
    records = []
    for camera, pairs in images.items():
        for k, (top, bottom) in enumerate(pairs):
            path = tmp_path / f"{camera}_{k}.png"
            _two_tone(path, top, bottom)
            records.append(ImageRecord(str(path), k, camera))
    styles = camera_styles(records, 2, workers=0, progress=False)
    for camera, pairs in images.items():
        # Half the pixels in each colour: mean is the midpoint, std half the distance, per channel.
        means = torch.stack([(_lab_of(t) + _lab_of(b)) / 2 for t, b in pairs]).mean(dim=0)
        stds = torch.stack([(_lab_of(t) - _lab_of(b)).abs() / 2 for t, b in pairs]).mean(dim=0)
        assert torch.allclose(styles.mean[camera], means, atol=1e-3)
        assert torch.allclose(styles.std[camera], stds, atol=1e-3)
    assert styles.counts.tolist() == [2, 1]


CASTS = {0: (170, 120, 90), 1: (90, 120, 170), 2: (100, 100, 100)}  # warm, cool, dark grey


def _textured_tree(root: Path, per_camera: int = 4) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for camera, cast in CASTS.items():
        for k in range(per_camera):
            pixels = np.clip(np.array(cast) + rng.normal(0, 18, (32, 16, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{camera * 10 + k:04d}_c{camera + 1}_{k:05d}.jpg"
            Image.fromarray(pixels).save(path, quality=95)
            records.append(ImageRecord(str(path), camera * 10 + k, camera))
    return records


def test_saved_images_carry_the_camera_statistics(tmp_path):
    records = _textured_tree(tmp_path)
    out = tmp_path / "cs"
    counts, styles = generate_colour_camstyle(records, 3, out, workers=0, progress=False)
    assert (counts.written, counts.skipped) == (len(records) * 2, 0)
    for record in records:
        for camera in range(3):
            path = out / f"{Path(record.path).stem}_fake_{camera + 1}.jpg"
            assert path.exists() == (camera != record.camid)
            if camera == record.camid:
                continue
            with Image.open(path) as image:
                assert image.size == (16, 32)
                mean, std = channel_stats(rgb_to_lab(to_float_rgb(image.convert("RGB"))))
            # JPEG and 8-bit rounding move the statistics a little.
            assert torch.allclose(mean, styles.mean[camera], atol=1.0), (mean, styles.mean[camera])
            assert torch.allclose(std, styles.std[camera], atol=1.0), (std, styles.std[camera])
    # The cameras really differ, so matching them is not trivial.
    assert (styles.mean[0] - styles.mean[1]).abs().max() > 20
    again, _ = generate_colour_camstyle(records, 3, out, styles=styles, workers=0, progress=False)
    assert (again.written, again.skipped) == (0, len(records) * 2)


def test_prepare_colour_method(tmp_path):
    records = _textured_tree(tmp_path / "data", per_camera=2)
    config = PrepareConfig(
        dataset="custom", root=tmp_path / "data", method="colour", workers=0, runtime=RuntimeConfig(device="cpu")
    )
    summary = run_prepare(config, progress=False)
    assert (summary["method"], summary["images"], summary["cameras"]) == ("colour", 6, 3)
    assert (summary["written"], summary["skipped"]) == (12, 0)
    assert len(summary["colour_styles"]["mean"]) == 3
    out = tmp_path / "data" / "bounding_box_train_camstyle"
    assert len(list(out.glob("*_fake_*.jpg"))) == 12 and (out / "prepare.json").is_file()
    assert len(records) == 6


def test_prepare_interrupted_re_raises_without_a_manifest(tmp_path, monkeypatch, capsys):
    import camstyle.prepare

    _textured_tree(tmp_path, per_camera=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(camstyle.prepare, "generate_colour_camstyle", interrupted)
    config = PrepareConfig(
        dataset="custom", root=tmp_path, method="colour", workers=0, runtime=RuntimeConfig(device="cpu")
    )
    with pytest.raises(KeyboardInterrupt):
        run_prepare(config, progress=False)
    assert "interrupted prepare" in capsys.readouterr().err
    assert not (tmp_path / "bounding_box_train_camstyle" / "prepare.json").exists()


class _Values(torch.utils.data.Dataset):
    def __init__(self, values: list[list[float]], cameras: list[int]) -> None:
        self.values, self.cameras = values, cameras

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(self.values[index]), self.cameras[index]


def test_per_camera_means_average_each_cameras_items_and_name_an_empty_camera() -> None:
    from camstyle.colour import per_camera_means
    from ecnreid.errors import EcnreidError

    dataset = _Values([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0]], [0, 0, 1])
    means, counts = per_camera_means(dataset, 2, "profile", workers=0, progress=False)
    assert torch.allclose(means, torch.tensor([[2.0, 4.0], [10.0, 0.0]])) and counts.tolist() == [2, 1]
    with pytest.raises(EcnreidError, match="camera 3 has no training images; cannot measure its profile"):
        per_camera_means(dataset, 3, "profile", workers=0, progress=False)
