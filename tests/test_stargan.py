import contextlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camstyle.trainer as trainer_module
from camstyle.stargan import (
    CameraInstanceNorm,
    Discriminator,
    Generator,
    ModelSpec,
    gradient_penalty,
    inverse_tanh,
)
from camstyle.trainer import learning_rate, model_spec, render_sample_grid, train_stargan
from ecnreid.config import StarGANConfig
from ecnreid.data.records import ImageRecord
from ecnreid.errors import EcnreidError
from ecnreid.runtime import seed_everything


@pytest.mark.parametrize("cameras", [2, 6, 15])
def test_generator_keeps_the_person_shape_and_range(cameras):
    generator = Generator(cameras, conv_dim=8, repeat_num=1)
    images = torch.rand(3, 3, 32, 16) * 2 - 1
    out = generator(images, torch.tensor([0, cameras - 1, 1]))
    assert out.shape == (3, 3, 32, 16)
    assert out.abs().max() <= 1.0
    # The camera is an input: the same image in two cameras' styles differs.
    twice = generator(images[:1].expand(2, -1, -1, -1), torch.tensor([0, cameras - 1]))
    assert not torch.allclose(twice[0], twice[1])


def test_residual_generator_starts_as_the_identity_and_round_trips_through_its_spec(tmp_path):
    images = torch.rand(4, 3, 32, 16) * 1.9 - 0.95
    cameras = torch.tensor([0, 1, 2, 1])
    residual = Generator(3, conv_dim=8, repeat_num=1, residual=True)
    assert torch.allclose(residual(images, cameras), images, atol=1e-5)
    assert not torch.allclose(Generator(3, conv_dim=8, repeat_num=1)(images, cameras), images, atol=0.1)
    # Once the last convolution has learnt something, the camera changes the output again.
    torch.nn.init.normal_(residual.main[-1].weight, std=0.05)
    twice = residual(images[:1].expand(2, -1, -1, -1), torch.tensor([0, 2]))
    assert not torch.allclose(twice[0], twice[1])
    spec = ModelSpec(num_cameras=3, image_size=(32, 16), g_conv_dim=8, g_repeat_num=1, g_residual=True)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.build_generator().residual
    # Checkpoints written before the option existed load as plain StarGAN generators.
    old = {k: v for k, v in spec.to_dict().items() if k != "g_residual"}
    assert not ModelSpec.from_dict(old).build_generator().residual


def test_camera_norm_conditions_every_norm_layer_on_the_target_camera():
    images = torch.rand(2, 3, 32, 16) * 1.9 - 0.95
    generator = Generator(3, conv_dim=8, repeat_num=1, residual=True, camera_norm=True)
    norms = [m for m in generator.modules() if isinstance(m, CameraInstanceNorm)]
    assert len(norms) == 1 + 2 + 2 * 1 + 2  # stem, down, residual block, up
    assert torch.allclose(generator(images, torch.tensor([0, 2])), images, atol=1e-5)  # identity at init
    torch.nn.init.normal_(generator.main[-1].weight, std=0.05)
    before = generator(images[:1].expand(3, -1, -1, -1), torch.tensor([0, 1, 2]))
    with torch.no_grad():  # a shift that only camera 2 has, in the last norm layer: a colour cast
        norms[-1].shift.weight[2] += 1.0
    after = generator(images[:1].expand(3, -1, -1, -1), torch.tensor([0, 1, 2]))
    assert torch.equal(before[:2], after[:2]) and not torch.allclose(before[2], after[2], atol=1e-3)
    # The camera reaches the embeddings through the loss.
    after[2].mean().backward()
    assert norms[-1].shift.weight.grad[2].abs().sum() > 0 and norms[-1].shift.weight.grad[:2].abs().sum() == 0
    spec = ModelSpec(num_cameras=3, image_size=(32, 16), g_conv_dim=8, g_repeat_num=1, g_camera_norm=True)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.build_generator().camera_norm
    # Generators saved before the option existed keep their state-dict keys and load as plain StarGAN.
    old = {k: v for k, v in spec.to_dict().items() if k != "g_camera_norm"}
    plain = ModelSpec.from_dict(old).build_generator()
    assert not plain.camera_norm and "main.1.weight" in plain.state_dict()


def test_generator_needs_sizes_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        Generator(2, conv_dim=8, repeat_num=1)(torch.zeros(1, 3, 30, 16), torch.tensor([0]))


@pytest.mark.parametrize("cameras", [2, 6, 15])
def test_discriminator_patch_and_camera_outputs(cameras):
    discriminator = Discriminator((32, 16), cameras, conv_dim=8, repeat_num=2)
    src, cls = discriminator(torch.randn(5, 3, 32, 16))
    assert src.shape == (5, 1, 8, 4)
    assert cls.shape == (5, cameras)


@pytest.mark.parametrize(("size", "kernel"), [((256, 128), (4, 2)), ((128, 64), (2, 1))])
def test_discriminator_head_kernel_covers_the_non_square_map(size, kernel):
    discriminator = Discriminator(size, 6, conv_dim=2, repeat_num=6)  # 6 strided convs, tiny widths
    assert discriminator.cls.kernel_size == kernel
    src, cls = discriminator(torch.randn(2, 3, *size))
    assert src.shape == (2, 1, *kernel)
    assert cls.shape == (2, 6)


def test_discriminator_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="divisible by 2"):
        Discriminator((42, 16), 2, conv_dim=8, repeat_num=2)
    with pytest.raises(ValueError, match="built for 32x16"):
        Discriminator((32, 16), 2, conv_dim=8, repeat_num=2)(torch.zeros(1, 3, 16, 32))


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = <w, x>: the gradient is w for every sample, so the penalty is (|w| - 1)^2 = (3 - 1)^2.
    w = torch.zeros(3, 4, 2)
    w[0, 0, 0], w[1, 2, 1] = 2.0, np.sqrt(5.0)
    w.requires_grad_(True)
    x = torch.randn(6, 3, 4, 2, requires_grad=True)
    penalty = gradient_penalty((x * w).sum(dim=(1, 2, 3)), x)
    assert penalty.item() == pytest.approx(4.0)
    # It stays differentiable: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|.
    penalty.backward()
    assert torch.allclose(w.grad, 2 * (3 - 1) * w.detach() / 3)


def test_gradient_penalty_is_per_sample():
    # D(x) = |x|^2 / 2 per sample: gradient x_i, norms 1, 2 and 3 → mean(0, 1, 4) = 5/3.
    x = torch.zeros(3, 1, 2, 2)
    x[0, 0, 0, 0], x[1, 0, 1, 1], x[2, 0, 0, 1] = 1.0, 2.0, 3.0
    x.requires_grad_(True)
    assert gradient_penalty(0.5 * (x**2).sum(dim=(1, 2, 3)), x).item() == pytest.approx(5 / 3)


def test_learning_rate_decays_linearly_over_the_second_half():
    config = StarGANConfig(iters=100)
    assert [learning_rate(1.0, i, config) for i in (0, 49, 50, 75, 99)] == pytest.approx([1, 1, 1, 0.5, 0.02])


def _tree(root: Path, cameras: int = 3, per_camera: int = 3) -> list[ImageRecord]:
    """Per-camera colour casts on random textures, 36x18 (a 1.125 load size of 32x16)."""
    rng = np.random.default_rng(0)
    records = []
    for camera in range(cameras):
        cast = np.array([60 + 60 * camera, 120, 200 - 60 * camera])
        for k in range(per_camera):
            pixels = np.clip(cast + rng.normal(0, 25, (36, 18, 3)), 0, 255).astype(np.uint8)
            path = root / "bounding_box_train" / f"{camera * 10 + k:04d}_c{camera + 1}_{k:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            records.append(ImageRecord(str(path), camera * 10 + k, camera))
    return records


def _tiny(**overrides) -> StarGANConfig:
    base = dict(
        iters=1,
        batch_size=4,
        image_size=(32, 16),
        conv_dim=8,
        g_repeat_num=1,
        d_repeat_num=2,
        n_critic=1,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
    )
    return StarGANConfig(**{**base, **overrides})


def _train(records, num_cameras, config, out_dir, resume=False, seed=0):
    """``train_stargan`` in this process (no loader workers), without a progress bar."""
    return train_stargan(records, num_cameras, config, out_dir, resume=resume, seed=seed, workers=0, progress=False)


def test_model_spec_gives_both_networks_one_width():
    config = _tiny(conv_dim=16, residual_generator=True, camera_norm=True)
    spec = model_spec(config, 5)
    assert spec == ModelSpec(
        num_cameras=5,
        image_size=(32, 16),
        g_conv_dim=16,
        g_repeat_num=1,
        d_conv_dim=16,
        d_repeat_num=2,
        g_residual=True,
        g_camera_norm=True,
    )


def test_one_step_changes_both_networks(tmp_path):
    records = _tree(tmp_path)
    config = _tiny()
    seed_everything(0)  # the trainer seeds the same way before building its networks
    spec = model_spec(config, 3)
    g0, d0 = spec.build_generator().state_dict(), spec.build_discriminator().state_dict()
    result = _train(records, 3, config, tmp_path / "run")
    saved = torch.load(result.checkpoint, weights_only=False)
    assert saved["iteration"] == 1 and saved["seed"] == 0 and saved["config"]["conv_dim"] == 8
    for before, after in ((g0, saved["generator"]), (d0, saved["discriminator"])):
        assert before.keys() == after.keys()
        unchanged = [k for k in before if torch.equal(before[k], after[k])]
        assert unchanged == []  # every parameter had a gradient and took an Adam step
    gen_only = torch.load(result.generator, weights_only=False)
    assert ModelSpec.from_dict(gen_only["model"]) == spec
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["iteration"] == 1 and {"d_gp", "d_cls", "g_rec", "g_cls"} <= log[0].keys()
    other = _train(records, 3, _tiny(), tmp_path / "other", seed=1)
    other_g = torch.load(other.generator, weights_only=False)["generator"]
    assert not all(torch.equal(other_g[k], gen_only["generator"][k]) for k in other_g)


def test_resume_continues_from_the_saved_iteration_and_matches_one_run(tmp_path):
    # Also the determinism check: two separate runs with the same seed end with the same weights.
    records = _tree(tmp_path)
    straight = _train(records, 3, _tiny(iters=4, n_critic=2), tmp_path / "a")
    first = _train(records, 3, _tiny(iters=2, n_critic=2), tmp_path / "b")
    assert first.iteration == 2
    resumed = _train(records, 3, _tiny(iters=4, n_critic=2), tmp_path / "b", resume=True)
    assert resumed.iteration == 4
    log = [json.loads(line)["iteration"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
    a = torch.load(straight.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    for net in ("generator", "discriminator"):
        assert all(torch.allclose(a[net][k], b[net][k], atol=1e-6) for k in a[net]), net


def test_existing_run_needs_resume_and_a_matching_model(tmp_path):
    records = _tree(tmp_path)
    _train(records, 3, _tiny(), tmp_path / "run")
    with pytest.raises(EcnreidError, match="--resume"):
        _train(records, 3, _tiny(), tmp_path / "run")
    with pytest.raises(EcnreidError, match="checkpoint has g_conv_dim=8 but this run has g_conv_dim=4"):
        _train(records, 3, _tiny(iters=2, conv_dim=4), tmp_path / "run", resume=True)
    with pytest.raises(EcnreidError, match="num_cameras"):
        _train(records, 2, _tiny(iters=2), tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    expected = "not a torch checkpoint file.*expected a StarGAN training checkpoint"
    with pytest.raises(EcnreidError, match=expected) as error:
        _train(records, 3, _tiny(iters=2), tmp_path / "run", resume=True)
    assert "\n" not in str(error.value)


# SIGTERM sent to the whole process group can reach a DataLoader worker first; torch then reports a RuntimeError.
WORKER_KILLED = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), WORKER_KILLED])
def test_ctrl_c_saves_a_checkpoint_says_where_and_re_raises(tmp_path, monkeypatch, capsys, stop):
    records = _tree(tmp_path)
    real_step = trainer_module.critic_step
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise stop
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "critic_step", interrupt_third)
    with pytest.raises(type(stop)) as raised:
        _train(records, 3, _tiny(iters=10), tmp_path / "run")
    assert raised.value is stop
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=False)["iteration"] == 2
    assert not (tmp_path / "run" / "generator.pt").exists()  # only a finished run exports the generator
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    assert f"state saved to {checkpoint}" in line and "--resume" in line
    monkeypatch.setattr(trainer_module, "critic_step", real_step)
    assert _train(records, 3, _tiny(iters=3), tmp_path / "run", resume=True).iteration == 3


def test_a_crash_is_not_a_stop_and_saves_nothing(tmp_path, monkeypatch):
    records = _tree(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(trainer_module, "critic_step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _train(records, 3, _tiny(iters=10), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_sample_grid_layout_and_file(tmp_path):
    records = _tree(tmp_path, cameras=2, per_camera=2)
    generator = Generator(2, conv_dim=8, repeat_num=1)
    images = trainer_module.sample_images(records, 3, (32, 16))
    # One image of each camera in turn: camera 0, camera 1, then camera 0 again.
    assert images.shape == (3, 3, 32, 16)
    grid = render_sample_grid(generator, images, 2, torch.device("cpu"))
    assert grid.size == (3 * 16, 3 * 32)  # columns: original + 2 cameras; rows: 3 images
    pixels = np.asarray(grid)
    expected_first = ((images[1].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(pixels[32:64, :16].astype(float) - expected_first).max() <= 1
    with torch.no_grad():
        fake = generator(images[2:3], torch.tensor([1]))[0]
    assert np.abs(pixels[64:96, 32:48].astype(float) - ((fake.permute(1, 2, 0) + 1) * 127.5).numpy()).max() <= 1

    _train(records, 2, _tiny(iters=2, sample_every=2), tmp_path / "run")
    with Image.open(tmp_path / "run" / "samples" / "iter_0000002.png") as png:
        assert png.size == (3 * 16, 4 * 32)  # 4 sample rows, 2 cameras + original


def test_too_few_cameras_or_images_is_a_user_error(tmp_path):
    records = _tree(tmp_path, cameras=2, per_camera=1)
    with pytest.raises(EcnreidError, match="2 cameras"):
        _train(records, 1, _tiny(), tmp_path / "run")
    with pytest.raises(EcnreidError, match="fewer than one batch"):
        _train(records, 2, _tiny(), tmp_path / "run")


def test_residual_skip_stays_fp32_and_finite_under_cpu_bf16_autocast():
    """In the cycle, the generator's bf16 output goes back in; 0.999 rounds to 1.0 in bf16, where atanh is
    inf and its gradient nan. The skip must be taken in fp32 whatever the autocast dtype."""
    assert torch.tensor(0.999, dtype=torch.bfloat16).item() == 1.0  # why the clamp must not run in bf16
    torch.manual_seed(0)
    generator = Generator(2, conv_dim=8, repeat_num=1, residual=True)
    with torch.no_grad():
        generator.main[-1].weight.normal_(0, 0.01)  # a generator that has started to learn
    pixels = torch.tensor([-1.0, -0.9995, -0.5, 0.0, 0.5, 0.9995, 1.0, 0.25])
    images = pixels.repeat(2 * 3 * 8 * 4 // 8).view(2, 3, 8, 4).to(torch.bfloat16).requires_grad_()
    cameras = torch.tensor([0, 1])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        skip = inverse_tanh(images)
        out = generator(images, cameras)
    assert skip.dtype == torch.float32 and torch.isfinite(skip).all()
    assert skip.abs().max().item() == pytest.approx(math.atanh(0.999), rel=1e-5)  # ±1 clamped to ±0.999
    assert torch.isfinite(out).all()
    assert out.abs().max().item() < 1.0  # fp32 output: near-saturated pixels stay where training can move them
    out.float().sum().backward()
    assert torch.isfinite(images.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in generator.parameters() if p.grad is not None)


def test_stargan_trains_in_fp32_unless_amp(tmp_path, monkeypatch):
    assert StarGANConfig().amp is False  # published StarGAN trains in fp32
    records = _tree(tmp_path, cameras=2, per_camera=2)
    seen = []
    real = trainer_module.autocast_for

    def record(device, enabled=True):
        seen.append(enabled)
        return real(device, enabled)

    monkeypatch.setattr(trainer_module, "autocast_for", record)
    _train(records, 2, _tiny(iters=1, sample_every=1), tmp_path / "run")
    assert len(seen) >= 4 and not any(seen)  # critic, penalty, generator steps and the sample grid

    # The context each call gets: nothing on the CPU, bf16 autocast on CUDA only when amp is on.
    cuda = torch.device("cuda")
    assert isinstance(real(cuda, False), contextlib.nullcontext)
    assert isinstance(real(torch.device("cpu"), True), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA absent on this machine: torch warns that it would be disabled
        on = real(cuda, True)
    assert isinstance(on, torch.autocast) and on.fast_dtype == torch.bfloat16 and on.device == "cuda"
