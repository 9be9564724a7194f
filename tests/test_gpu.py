"""GPU readiness: the CUDA code paths against their CPU results (skipped where CUDA is absent).

Run on a CUDA machine with ``pytest -m gpu tests/test_gpu.py`` (``bench/gpu_check.sh`` does, then times
the training, StarGAN, kNN and evaluation on the device). Tolerances allow for GPU float math only: a test
that compares with the CPU uses data whose rankings have no near-ties (checked in the test itself).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from camstyle.generate import generate_camstyle, load_generator
from camstyle.prepare import run_prepare
from camstyle.trainer import build_train_state, critic_step, generator_step, model_spec, train_stargan
from ecnreid.config import (
    DomainsConfig,
    ModelConfig,
    PrepareConfig,
    RuntimeConfig,
    StarGANConfig,
    TrainConfig,
    override,
)
from ecnreid.data.records import ImageRecord
from ecnreid.evaluation.evaluator import score_features
from ecnreid.evaluation.reranking import k_reciprocal_rerank
from ecnreid.losses import faiss_gpu_count, nearest_slots, nearest_slots_faiss
from ecnreid.memory import ExemplarMemory
from ecnreid.runstate import load_checkpoint
from ecnreid.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"


# ----------------------------------------------------------------------------- ECN training with AMP


@pytest.mark.parametrize(
    ("knn", "memory_dtype", "workers"),
    [("topk", "fp32", 2), ("faiss", "fp32", 0), ("topk", "fp16", 0)],
)
def test_amp_training_epoch_keeps_a_unit_norm_memory(
    two_domains, tmp_path: Path, knn: str, memory_dtype: str, workers: int
) -> None:
    source, target = two_domains
    # A colour CamStyle set (seconds) so that camera invariance runs too: the full +E+C+N setting.
    run_prepare(
        PrepareConfig(dataset="synthetic", root=target, method="colour", workers=0, runtime=RuntimeConfig(device="cpu"))
    )
    out = tmp_path / "run"
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        # Random weights: nothing may be downloaded on the GPU machine.
        model=ModelConfig(arch="resnet18", pretrained=False, weights=None, frozen_stages=1),
        out=out,
    )
    config = override(
        config,
        epochs=1,
        iters_per_epoch=4,
        batch_size=8,
        height=64,
        width=32,
        workers=workers,
        every=0,
        neighbour_start_epoch=0,  # the neighbourhood loss (and its kNN) runs from the first step
        knn=knn,
        memory_dtype=memory_dtype,
        device=DEVICE,
        amp=True,
    )
    summary = train(config)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("loss_total", "loss_source", "loss_target"):
        assert math.isfinite(rows[0][key]), (key, rows[0][key])
    # The last epoch is always evaluated, here with features extracted on the device.
    assert 0.0 <= summary["final"]["rank1"] <= 100.0
    assert summary["setting"] == "+E+C+N"
    # On CUDA, --knn faiss searches with faiss on the GPU, or with torch top-k where faiss sees no GPU.
    expected_backend = "topk" if knn == "topk" or faiss_gpu_count() == 0 else "faiss-gpu"
    assert summary["knn_backend"] == expected_backend

    state = load_checkpoint(out / "last.pt")
    # An empty scaler state would mean AMP and the GradScaler were silently off.
    assert state["scaler"].get("scale") is not None
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    memory = state["method"]["memory"]["features"]
    expected_dtype = torch.float32 if memory_dtype == "fp32" else torch.float16
    assert memory.dtype == expected_dtype
    assert memory.shape == (24, 4096)
    norms = memory.float().norm(dim=1)
    written = norms > 0
    assert int(written.sum()) >= 8  # 4 steps x 8 target images visit at least one batch's slots
    # Rows written by the update are unit norm (fp16 storage rounds each entry to ~1e-3 relative).
    atol = 1e-4 if memory_dtype == "fp32" else 2e-3
    assert torch.allclose(norms[written], torch.ones(int(written.sum())), atol=atol)


def test_memory_logits_under_autocast_are_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    beta = 0.05
    memory = ExemplarMemory(1000, 256).to(DEVICE)
    memory.features.copy_(F.normalize(torch.randn(1000, 256, generator=gen), dim=1).to(DEVICE))
    features = F.normalize(torch.randn(16, 256, generator=gen), dim=1).to(DEVICE).requires_grad_(True)
    expected = (features.detach() @ memory.features.t()) / beta  # fp32 product, outside autocast
    with torch.autocast(DEVICE, dtype=torch.float16):
        logits = memory.logits(features, beta)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=0)
    # The gradient reaches the features (the memory is a buffer): d sum(f M^T / beta) / d f = (1 / beta) 1 M.
    logits.sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.float32
    expected_grad = torch.full((16, 1000), 1 / beta, device=DEVICE) @ memory.features
    torch.testing.assert_close(features.grad, expected_grad, atol=1e-3, rtol=1e-4)


def test_memory_update_on_the_device_equals_the_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    start = F.normalize(torch.randn(64, 32, generator=gen), dim=1)
    start[:8] = 0.0  # slots never written yet
    on_cpu = ExemplarMemory(64, 32)
    on_cpu.features.copy_(start)
    on_device = ExemplarMemory(64, 32).to(DEVICE)
    on_device.features.copy_(start.to(DEVICE))
    for alpha, half in ((0.0, False), (0.3, True), (0.5, False)):
        features = torch.randn(40, 32, generator=gen)
        if half:  # AMP hands the update fp16 embeddings
            features = features.half()
        indices = torch.randint(0, 64, (40,), generator=gen)  # 40 draws of 64 slots: duplicates in a batch
        on_cpu.update(features, indices, alpha)
        on_device.update(features.to(DEVICE), indices.to(DEVICE), alpha)
    assert on_device.features.device.type == torch.device(DEVICE).type
    assert on_device.features.dtype == torch.float32
    torch.testing.assert_close(on_device.features.cpu(), on_cpu.features, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- neighbours


def test_faiss_gpu_knn_equals_torch_topk() -> None:
    pytest.importorskip("faiss")
    if faiss_gpu_count() == 0:
        pytest.skip("this faiss build sees no GPU (training then searches with torch on the device)")
    gen = torch.Generator().manual_seed(0)
    k = 6
    memory = F.normalize(torch.randn(5000, 256, generator=gen), dim=1)
    features = F.normalize(torch.randn(128, 256, generator=gen), dim=1)
    # Rows whose k-th and (k+1)-th similarities are within float error may legitimately differ: leave them out.
    top = (features.double() @ memory.double().T).topk(k + 1, dim=1)
    clear = (top.values[:, k - 1] - top.values[:, k]) > 1e-5
    assert clear.float().mean() > 0.9
    found = nearest_slots_faiss(features.to(DEVICE), memory.to(DEVICE), k)
    assert found.device.type == torch.device(DEVICE).type
    assert found.dtype == torch.long and found.shape == (128, k)
    expected = nearest_slots(features.to(DEVICE) @ memory.to(DEVICE).T, k)
    for row in torch.nonzero(clear).flatten().tolist():
        exact = set(top.indices[row, :k].tolist())
        assert set(expected[row].tolist()) == exact, row
        assert set(found[row].tolist()) == exact, row


# ----------------------------------------------------------------------------- StarGAN

SMALL_GAN = {"conv_dim": 16, "g_repeat_num": 2, "d_repeat_num": 5}  # 64x32: 2^5 divides both


def _write_people(folder: Path, cameras: list[int], sizes: list[tuple[int, int]]) -> list[ImageRecord]:
    """Noisy images named ``{pid:04d}_c{cam}_{n:05d}.jpg``; ``sizes`` are (width, height)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (camera, (w, h)) in enumerate(zip(cameras, sizes, strict=True)):
        pixels = np.clip(rng.normal(60 + 40 * camera, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i + 1:04d}_c{camera + 1}_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        records.append(ImageRecord(str(path), i + 1, camera))
    return records


def _check_generated(out: Path, records: list[ImageRecord], num_cameras: int) -> None:
    expected = {f"{Path(r.path).stem}_fake_{c + 1}.jpg" for r in records for c in range(num_cameras) if c != r.camid}
    assert {p.name for p in out.iterdir()} == expected
    for record in records:
        with Image.open(record.path) as source:
            size = source.size
        for camera in range(num_cameras):
            if camera != record.camid:
                with Image.open(out / f"{Path(record.path).stem}_fake_{camera + 1}.jpg") as image:
                    assert image.size == size


def test_stargan_step_and_generation_on_the_device(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = StarGANConfig(image_size=(64, 32), batch_size=4, amp=True, **SMALL_GAN)
    spec = model_spec(config, 3)
    state = build_train_state(spec, config, seed=0, device=DEVICE)
    generator, discriminator = state.generator, state.discriminator
    before_g = [p.detach().clone() for p in generator.parameters()]
    before_d = [p.detach().clone() for p in discriminator.parameters()]
    x_real = (torch.rand(4, 3, 64, 32) * 2 - 1).to(DEVICE)
    c_org = torch.tensor([0, 1, 2, 0], device=DEVICE)
    c_trg = (c_org + 1) % 3
    losses = critic_step(state, x_real, c_org, c_trg, config)
    losses |= generator_step(state, x_real, c_org, c_trg, config)
    assert set(losses) == {"d_real", "d_fake", "d_cls", "d_gp", "g_fake", "g_cls", "g_rec"}
    for name, value in losses.items():
        assert math.isfinite(float(value)), (name, float(value))
    # Both optimisers stepped, and no weight became NaN or inf (e.g. from the bf16 gradient penalty).
    for before, network in ((before_g, generator), (before_d, discriminator)):
        after = list(network.parameters())
        assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True))
        assert all(torch.isfinite(p).all() for p in after)

    sizes = [(32, 64), (40, 80), (30, 60), (32, 64)]  # generation writes each image back at its own size
    records = _write_people(tmp_path / "images", [0, 1, 2, 1], sizes)
    generator.eval()
    generated = tmp_path / "generated"
    counts = generate_camstyle(
        generator, records, 3, generated, image_size=(64, 32), batch_size=5, device=DEVICE, workers=0, progress=False
    )
    assert (counts.written, counts.skipped) == (8, 0)
    _check_generated(generated, records, 3)
    # The same generator on the CPU (fp32) draws nearly the same pictures: bf16 autocast is the only change.
    cpu_generator = spec.build_generator()
    cpu_generator.load_state_dict({k: v.cpu() for k, v in generator.state_dict().items()})
    generate_camstyle(cpu_generator, records, 3, tmp_path / "cpu", image_size=(64, 32), workers=0, progress=False)
    for path in generated.iterdir():
        with Image.open(path) as a, Image.open(tmp_path / "cpu" / path.name) as b:
            difference = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean()
        assert difference < 4.0, (path.name, difference)


def test_train_stargan_few_iterations_on_the_device(tmp_path: Path) -> None:
    records = _write_people(tmp_path / "images", [0, 1, 2] * 4, [(32, 64)] * 12)
    config = StarGANConfig(
        iters=4,
        batch_size=4,
        image_size=(64, 32),
        n_critic=2,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
        sample_rows=3,
        **SMALL_GAN,
    )
    result = train_stargan(records, 3, config, tmp_path / "gan", device=DEVICE, workers=0, progress=False)
    assert result.iteration == 4
    assert result.generator.is_file() and result.checkpoint.is_file()
    assert len(result.samples) == 2 and all(p.is_file() for p in result.samples)
    rows = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for row in rows for v in row.values())
    generator, _ = load_generator(result.generator, DEVICE)
    counts = generate_camstyle(
        generator, records[:3], 3, tmp_path / "out", image_size=(64, 32), device=DEVICE, workers=0, progress=False
    )
    assert counts.written == 6
    _check_generated(tmp_path / "out", records[:3], 3)


# ----------------------------------------------------------------------------- evaluation


def _continuous_features() -> tuple[torch.Tensor, torch.Tensor]:
    """30 query and 150 gallery 8-d features whose neighbour sets at re-ranking's cut-offs are unambiguous.

    Re-ranking (k1 20, k2 6) keeps each image's 21, 11 and 6 nearest (itself included); with seed 22 every
    gap at those cut-offs is above 2e-4 in squared distance, far above float error, so the CPU and the device
    must find the same sets. NumPy's generator is bit-identical across machines.
    """
    x = torch.from_numpy(np.random.default_rng(22).standard_normal((180, 8)))
    unit = F.normalize(x, dim=1)
    ordered = torch.cdist(unit, unit).pow(2).sort(dim=1).values
    gaps = torch.stack([ordered[:, cut] - ordered[:, cut - 1] for cut in (6, 11, 21)])
    assert float(gaps.min()) > 1e-4  # the premise of the comparison
    x = x.float()
    return x[:30], x[30:]


def _records(pids: list[int], cameras: list[int]) -> list[ImageRecord]:
    return [ImageRecord(f"{i:05d}.jpg", pid, cam) for i, (pid, cam) in enumerate(zip(pids, cameras, strict=True))]


def test_rerank_on_device_features_equals_the_cpu() -> None:
    query, gallery = _continuous_features()
    expected = k_reciprocal_rerank(query, gallery)
    found = k_reciprocal_rerank(query.to(DEVICE), gallery.to(DEVICE))
    assert found.shape == (30, 150) and found.dtype == torch.float32
    torch.testing.assert_close(found.cpu(), expected, atol=1e-4, rtol=0)


def _exact_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[ImageRecord], list[ImageRecord]]:
    """Features whose distances are exact in float32 on any device and in any summation order.

    Every vector has four entries of +-1 (norm 2, so normalising only halves it): dot products are multiples
    of 1/4, cosine distances multiples of 1/4, squared Euclidean distances integers. Many distances tie
    exactly, which exercises the protocol's tie rule (smaller gallery index first) on both devices. Images of
    one person share three of the four entries.
    """
    rng = np.random.default_rng(seed)
    dim, num_ids = 32, 20

    def vector(base_positions: np.ndarray, base_signs: np.ndarray) -> np.ndarray:
        v = np.zeros(dim, dtype=np.float32)
        v[base_positions] = base_signs
        free = np.setdiff1d(np.arange(dim), base_positions)
        v[rng.choice(free)] = rng.choice([-1.0, 1.0])
        return v

    identities = [(rng.choice(dim, 3, replace=False), rng.choice([-1.0, 1.0], 3)) for _ in range(num_ids)]
    q_pids = list(range(num_ids))
    q_cams = [int(c) for c in rng.integers(0, 4, num_ids)]
    g_pids = [pid for pid in range(num_ids) for _ in range(5)] + [0] * 10  # 10 more of pid 0
    g_cams = [int(c) for c in rng.integers(0, 4, len(g_pids))]
    query = np.stack([vector(*identities[p]) for p in q_pids])
    gallery = np.stack([vector(*identities[p]) for p in g_pids])
    return torch.from_numpy(query), torch.from_numpy(gallery), _records(q_pids, q_cams), _records(g_pids, g_cams)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_metrics_of_device_features_equal_the_cpu(metric: str) -> None:
    qf, gf, query, gallery = _exact_features()
    expected = score_features(qf, gf, query, gallery, metric=metric)
    found = score_features(qf.to(DEVICE), gf.to(DEVICE), query, gallery, metric=metric)
    assert expected.num_valid_queries > 10
    assert found.num_valid_queries == expected.num_valid_queries
    assert found.num_queries == expected.num_queries
    # Exact distances, so exact metrics (up to float64 summation order).
    assert found.cmc == pytest.approx(expected.cmc, abs=1e-12)
    assert found.mAP == pytest.approx(expected.mAP, abs=1e-12)
    assert found.mINP == pytest.approx(expected.mINP, abs=1e-12)


def test_reranked_metrics_of_device_features_match_the_cpu() -> None:
    qf, gf = _continuous_features()
    rng = np.random.default_rng(1)
    query = _records([int(p) for p in rng.integers(1, 11, 30)], [int(c) for c in rng.integers(0, 3, 30)])
    gallery = _records([int(p) for p in rng.integers(1, 11, 150)], [int(c) for c in rng.integers(0, 3, 150)])
    expected = score_features(qf, gf, query, gallery, rerank=True)
    found = score_features(qf.to(DEVICE), gf.to(DEVICE), query, gallery, rerank=True)
    assert found.num_valid_queries == expected.num_valid_queries
    # Re-ranked distances agree to 1e-4 (see above); a swap of two near-equal ones may move one rank.
    assert found.cmc[0] == pytest.approx(expected.cmc[0], abs=0.05)
    assert found.mAP == pytest.approx(expected.mAP, abs=0.02)
    assert found.mINP == pytest.approx(expected.mINP, abs=0.02)
