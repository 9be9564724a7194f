"""ECN's settings reach their effect through the code a run executes: ``ECN.step`` on a hand-made memory against the
spec's formulas written out here, ``after_step``'s momentum schedule, the neighbourhood term's start, and the
camera-invariance inputs of the training batches.
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
from terminal_bars import assert_finished_bar, last_frames, terminal_console

import ecnreid.methods.ecn as ecn_module
from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, config_to_dict, override
from ecnreid.data.batches import LabelledBatch, UnlabelledBatch
from ecnreid.data.camstyle_dataset import CAMSTYLE_FOLDER, pseudo_camera_keys
from ecnreid.engine.loop import TwoDomainLoop
from ecnreid.errors import EcnreidError
from ecnreid.inference.card import ECN_FEATURE, MethodCard, build_card
from ecnreid.losses import source_loss
from ecnreid.methods.base import StepOutput
from ecnreid.models.dg import dg_source_loss
from ecnreid.models.rsc import RSC
from ecnreid.runtime import DistributedContext
from ecnreid.training import build_loop

EMBEDDING = 4


def tiny_config(source: Path, target: Path, out: Path, **settings) -> TrainConfig:
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=out,
        model=ModelConfig(arch="resnet18", pretrained=False, embedding_dim=EMBEDDING),
    )
    defaults = dict(epochs=1, batch_size=8, height=32, width=16, workers=0, every=0, seed=0, device="cpu")
    return override(config, **{**defaults, "use_camera": False, **settings})


def spec_target_loss(f: list[list[float]], memory: list[list[float]], own: list[int], beta: float, k: int | None):
    """The spec's target loss in plain Python: ``z = f·Mᵀ/β``; exemplar cross-entropy, or with ``k`` the
    neighbourhood loss ``−Σ_j w_j log softmax(z)_j`` (w 1/k on the k most similar slots, 1 on the own slot)."""
    total = 0.0
    for row, i in zip(f, own, strict=True):
        z = [sum(a * b for a, b in zip(row, slot, strict=True)) / beta for slot in memory]
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        weights = [0.0] * len(memory)
        if k is not None:
            for j in sorted(range(len(z)), key=lambda j: -z[j])[:k]:
                weights[j] = 1.0 / k
        weights[i] = 1.0
        total -= sum(w * lp for w, lp in zip(weights, log_p, strict=True))
    return total / len(f)


# Five unit slots of a 24-slot memory (the rest zero) and two unit target features whose three most similar
# slots are distinct (no ties) and exclude their own slot: the neighbourhood term then differs from the exemplar one.
SLOTS = {
    0: [1.0, 0.0, 0.0, 0.0],
    1: [0.8, 0.6, 0.0, 0.0],
    2: [0.0, 1.0, 0.0, 0.0],
    3: [0.0, 0.6, 0.8, 0.0],
    4: [0.0, 0.0, 0.0, 1.0],
}
FEATURES = [[0.6, 0.8, 0.0, 0.0], [v / math.sqrt(0.99) for v in (0.1, 0.3, 0.5, 0.8)]]
OWN = [4, 0]


def hand_made(loop: TwoDomainLoop) -> list[list[float]]:
    memory = loop.method.memory.features
    memory.zero_()
    for slot, row in SLOTS.items():
        memory[slot] = torch.tensor(row)
    return memory.tolist()


def fixed_network(source_logits: torch.Tensor, target_embedding: torch.Tensor):
    """A stand-in for the two-domain forward: fixed outputs, so the losses are known in advance."""

    def network(source_images, source_labels, target_images):
        return {"source_logits": source_logits}, {"target_embedding": target_embedding}

    return network


def one_step(loop: TwoDomainLoop, epoch: int) -> StepOutput:
    source_logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 3.0]])
    images, cameras = torch.zeros(2, 3, 32, 16), torch.zeros(2, dtype=torch.long)
    x = LabelledBatch(images, torch.tensor([0, 3]), cameras, torch.arange(2))
    u = UnlabelledBatch(images, cameras, torch.tensor(OWN))
    return loop.method.step(fixed_network(source_logits, torch.tensor(FEATURES)), x, u, epoch)


def spec_source_loss() -> float:
    logits, labels = [[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 3.0]], [0, 3]
    return sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits, labels, strict=True)) / 2


@pytest.mark.parametrize(("beta", "k", "lam"), [(0.05, 3, 0.3), (0.2, 2, 0.5)])
def test_one_step_gives_the_spec_losses_for_beta_k_lambda_and_epoch(two_domains, tmp_path: Path, beta, k, lam) -> None:
    source, target = two_domains
    config = tiny_config(source, target, tmp_path / "run", beta=beta, k=k, lam=lam, neighbour_start_epoch=3)
    loop = build_loop(config)
    memory = hand_made(loop)
    for epoch, neighbours in ((2, None), (3, k), (7, k)):  # exemplar before --neighbour-start, neighbourhood from it
        output = one_step(loop, epoch)
        expected_target = spec_target_loss(FEATURES, memory, OWN, beta, neighbours)
        assert output.parts["target"].item() == pytest.approx(expected_target, rel=1e-5), (epoch, beta, k)
        assert output.parts["source"].item() == pytest.approx(spec_source_loss(), rel=1e-6)
        expected_total = (1 - lam) * spec_source_loss() + lam * expected_target
        assert output.total.item() == pytest.approx(expected_total, rel=1e-5)
    # The hand-made case is one where the settings matter: another β, or the neighbour term, moves the loss.
    exemplar = spec_target_loss(FEATURES, memory, OWN, beta, None)
    assert spec_target_loss(FEATURES, memory, OWN, 1.0, None) != pytest.approx(exemplar, rel=1e-2)
    assert spec_target_loss(FEATURES, memory, OWN, beta, k) != pytest.approx(exemplar, rel=1e-2)


def test_without_neighbourhood_invariance_every_epoch_is_exemplar(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", use_neighbour=False, neighbour_start_epoch=0))
    memory = hand_made(loop)
    assert not loop.method.neighbours_on(9)
    output = one_step(loop, 9)
    assert output.parts["target"].item() == pytest.approx(spec_target_loss(FEATURES, memory, OWN, 0.05, None), rel=1e-5)


def test_neighbour_search_runs_from_neighbour_start_on(two_domains, tmp_path: Path, monkeypatch) -> None:
    """With ``--knn faiss`` the method searches the memory itself: never before ``--neighbour-start``, every step
    from it on, and its neighbours give the spec's loss."""
    pytest.importorskip("faiss")
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", knn="faiss", k=2, neighbour_start_epoch=4))
    assert loop.method.knn == "faiss-cpu"
    memory = hand_made(loop)
    searches = []
    real = ecn_module.nearest_slots_faiss

    def counted(features, slots, k):
        searches.append(k)
        return real(features, slots, k)

    monkeypatch.setattr(ecn_module, "nearest_slots_faiss", counted)
    assert [loop.method.neighbours_on(e) for e in (0, 3, 4, 9)] == [False, False, True, True]
    before = one_step(loop, 3)
    assert searches == []
    assert before.parts["target"].item() == pytest.approx(spec_target_loss(FEATURES, memory, OWN, 0.05, None), rel=1e-5)
    after = one_step(loop, 4)
    assert searches == [2]
    assert after.parts["target"].item() == pytest.approx(spec_target_loss(FEATURES, memory, OWN, 0.05, 2), rel=1e-5)


@pytest.mark.parametrize(("alpha", "epoch"), [(0.01, 0), (0.01, 7), (0.1, 4)])
def test_after_step_updates_the_memory_with_momentum_alpha_times_epoch(
    two_domains, tmp_path: Path, alpha: float, epoch: int
) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", alpha=alpha))
    memory = loop.method.memory.features
    old = F.normalize(torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]), dim=1)
    memory[[3, 10]] = old
    untouched = memory.clone()
    new = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 0.0, 0.0, 1.0]])
    u = UnlabelledBatch(torch.zeros(2, 3, 32, 16), torch.zeros(2, dtype=torch.long), torch.tensor([3, 10]))
    loop.method.after_step(StepOutput(torch.zeros(()), {}, state=new), u, epoch)
    momentum = alpha * epoch  # the spec: α = 0.01 × epoch, so epoch 0 overwrites the slot
    for row, slot in enumerate((3, 10)):
        mixed = [momentum * a + (1 - momentum) * b for a, b in zip(old[row].tolist(), new[row].tolist(), strict=True)]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert memory[slot].tolist() == pytest.approx([v / norm for v in mixed], abs=1e-6), (alpha, epoch, slot)
    others = [i for i in range(len(memory)) if i not in (3, 10)]
    assert torch.equal(memory[others], untouched[others])


def test_a_training_step_moves_the_memory_with_the_epochs_momentum(two_domains, tmp_path: Path) -> None:
    """Through the loop's own step: slot ``i`` becomes ``α·M[i] + (1−α)·f_i``, normalised, with the batch's
    target features ``f``."""
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", alpha=0.1))
    loader_x, loader_u = loop.loaders()
    loader_x.set_epoch(3)
    loader_u.set_epoch(3)
    x, u = next(loader_x), next(loader_u)
    memory = loop.method.memory.features
    memory.copy_(F.normalize(torch.randn(memory.shape, generator=torch.Generator().manual_seed(0)), dim=1))
    before = memory.clone()
    captured = {}
    real_after_step = loop.method.after_step

    def capture(output, batch, epoch):
        captured["f"] = output.state.clone()
        real_after_step(output, batch, epoch)

    loop.method.after_step = capture
    loop.train_step(x, u, epoch=3)
    f, slots = captured["f"], u.indices
    expected = F.normalize(0.3 * before[slots] + 0.7 * f, dim=1)  # α = 0.1 × 3
    torch.testing.assert_close(memory[slots], expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- camera invariance inputs
CAMERA_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # the fakes in camera c's style: one solid colour each


def write_solid_camstyle_set(target: Path, folder: Path) -> None:
    """Every target training image rendered into each other camera as that camera's solid colour
    (StarGAN names, 1-based cameras)."""
    folder.mkdir()
    for path in sorted((target / "bounding_box_train").glob("*.jpg")):
        own = int(path.stem.split("_c")[1].split("_")[0])
        width, height = Image.open(path).size
        for camera in range(1, len(CAMERA_COLOURS) + 1):
            if camera != own:
                fake = Image.new("RGB", (width, height), CAMERA_COLOURS[camera - 1])
                fake.save(folder / f"{path.stem}_fake_{camera}.jpg")


def style_of(image: torch.Tensor) -> int | None:
    """The camera whose solid colour the (normalised) training image shows, or None for an original image.

    The median pixel survives the crop, flip and random erasing (at most a fifth of the image)."""
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    rgb = (image.flatten(1).median(dim=1).values * std + mean) * 255
    for camera, colour in enumerate(CAMERA_COLOURS):
        if (rgb - torch.tensor(colour, dtype=torch.float32)).abs().max() < 30:
            return camera
    return None


def test_training_batches_hold_camstyle_images_in_the_spec_proportion(two_domains, tmp_path: Path) -> None:
    """Camera ``c`` is drawn uniformly from the target's 3 cameras; the own camera gives the original image.
    So each (own camera, style) cell of the draws is a binomial with p = 1/3 and never a fake of the own camera."""
    source, target = two_domains
    camstyle = tmp_path / "camstyle"
    write_solid_camstyle_set(target, camstyle)
    loop = build_loop(tiny_config(source, target, tmp_path / "run", use_camera=True, camstyle_dir=camstyle))
    assert loop.method.ecn.setting_name == "+E+C+N"
    # Originals are noisy non-primary colours: none passes for a fake.
    originals = loop.method.target_dataset(None).records
    assert all(np.abs(np.asarray(Image.open(r.path)).astype(int) - np.array(c)).max() >= 30
               for r in originals for c in CAMERA_COLOURS)
    _, target_loader = loop.loaders()
    counts = np.zeros((3, 4), dtype=int)  # own camera x (style camera 0..2, original)
    for epoch in range(10):
        target_loader.set_epoch(epoch)
        for _ in range(len(originals) // 8):
            batch = next(target_loader)
            for image, own in zip(batch.images, batch.camids.tolist(), strict=True):
                style = style_of(image)
                counts[own, 3 if style is None else style] += 1
    draws = counts.sum(axis=1)
    assert draws.tolist() == [80, 80, 80]  # 8 images per camera, 10 epochs
    assert counts[[0, 1, 2], [0, 1, 2]].tolist() == [0, 0, 0]  # the own camera's style is the original image
    # Each of the 9 cells that may fill is Binomial(80, 1/3): mean 26.7, sd 4.2. Hoeffding gives
    # P(|X − 26.7| ≥ 16) ≤ 2·exp(−2·16²/80) = 3e-3 per cell; the draws are seeded, so the test is deterministic.
    for own in range(3):
        for cell in [c for c in range(3) if c != own] + [3]:
            assert abs(counts[own, cell] - 80 / 3) < 16, counts


# --------------------------------------------------------------------------- finding the CamStyle set
def write_full_camstyle_set(target: Path, folder: Path) -> int:
    """A fake of every target training image in every camera (own camera included), so that any camera
    assignment finds its set complete; returns the number of training images."""
    folder.mkdir()
    images = sorted((target / "bounding_box_train").glob("*.jpg"))
    for path in images:
        for camera in range(1, len(CAMERA_COLOURS) + 1):
            Image.new("RGB", (16, 32), CAMERA_COLOURS[camera - 1]).save(folder / f"{path.stem}_fake_{camera}.jpg")
    return len(images)


def test_a_camstyle_dir_that_is_not_there_names_the_option(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    missing = tmp_path / "nowhere"
    config = tiny_config(source, target, tmp_path / "run", use_camera=True, camstyle_dir=missing)
    with pytest.raises(EcnreidError) as error:
        build_loop(config)
    assert str(error.value) == f"--camstyle-dir {missing}: CamStyle folder not found"


def test_without_a_camstyle_set_the_run_stops_with_the_remedies(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    with pytest.raises(EcnreidError) as error:
        build_loop(tiny_config(source, target, tmp_path / "run", use_camera=True))
    assert str(error.value) == (
        f"{target / CAMSTYLE_FOLDER}: no CamStyle set for camera invariance; make one with `ecnreid prepare "
        f"--dataset synthetic --root {target}`, point --camstyle-dir at one, or train without camera invariance "
        "with --no-camera"
    )


def test_the_set_beside_the_target_is_found_and_its_pseudo_cameras_replace_the_cameras(two_domains, tmp_path) -> None:
    source, target = two_domains
    folder = target / CAMSTYLE_FOLDER
    images = write_full_camstyle_set(target, folder)
    loop = build_loop(tiny_config(source, target, tmp_path / "plain", use_camera=True))
    coverage = loop.method.camstyle
    assert coverage.camstyle_dir == folder and coverage.complete
    assert coverage.expected == images * 2  # every image in each of the 2 other cameras of 3
    assert loop.method.num_target_cameras == 3
    # A pseudo-camera mapping: two cameras, by identity parity.
    records = loop.data.target_train
    mapping = {key: r.pid % 2 for key, r in zip(pseudo_camera_keys(records), records, strict=True)}
    (folder / "pseudo_cameras.json").write_text(json.dumps(mapping))
    loop = build_loop(tiny_config(source, target, tmp_path / "pseudo", use_camera=True))
    assert [r.camid for r in loop.method.data.target_train] == [r.pid % 2 for r in records]
    assert loop.method.num_target_cameras == 2
    assert loop.method.camstyle.expected == images  # one other camera each
    assert loop.method.provenance()["camstyle"] == loop.method.camstyle.to_dict()


def test_an_incomplete_camstyle_set_stops_the_run(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    folder = tmp_path / "camstyle"
    write_solid_camstyle_set(target, folder)
    first = sorted(folder.iterdir())[0]
    first.unlink()
    config = tiny_config(source, target, tmp_path / "run", use_camera=True, camstyle_dir=folder)
    with pytest.raises(EcnreidError) as error:
        build_loop(config)
    assert str(error.value) == (
        f"{folder}: incomplete CamStyle set, 1 of 48 images missing (first: {first}); rerun `ecnreid prepare` to "
        "fill it, or train with --no-camera"
    )


# --------------------------------------------------------------------------- what the method builds and reports
def test_the_memory_holds_one_slot_per_target_image_in_the_chosen_dtype(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", memory_dtype="fp16"))
    memory = loop.method.memory.features
    assert memory.dtype == torch.float16 and memory.shape == (len(loop.data.target_train), EMBEDDING)
    assert loop.method.signature() == {
        "embedding_dim": EMBEDDING, "memory_slots": len(loop.data.target_train), "memory_dtype": "fp16"
    }
    assert "embedding_dim" in loop.signature()  # the run's resume keys include the method's
    assert loop.method.knn == "topk"


def test_the_method_reports_its_setting_weights_and_data(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", lr=0.02, backbone_lr_mult=0.25))
    method, data = loop.method, loop.data
    origin = method.model.backbone.weights_origin
    assert method.provenance() == {
        "setting": "+E+N", "backbone_weights": origin, "camstyle": None, "knn_backend": "topk"
    }
    assert method.model_card() == MethodCard(
        ECN_FEATURE, method.model.backbone.out_channels, "+E+N",
        {
            "backbone_weights": origin,
            "dg": {"mixstyle": [], "snr": [], "rsc": False},
            "model": {"last_stride": 2, "dg": config_to_dict(method.config.dg)},
        },
    )
    rebuilt = type(method).model_from_card(build_card(method.config, method.model_card(), [], 0), torch.device("cpu"))
    images = torch.rand(2, 3, 32, 16)
    rebuilt.load_state_dict({k: v for k, v in method.model.state_dict().items() if k.startswith("backbone.")})
    assert torch.allclose(rebuilt.eval()(images), method.model.eval()(images), atol=1e-6)  # the eval feature
    assert method.describe() == (
        f"ECN +E+N: source synthetic ({len(data.source_train)} images, {data.num_source_classes} ids) → target "
        f"synthetic ({len(data.target_train)} train images, 3 cameras, {len(data.target.query)} query, "
        f"{len(data.target.gallery)} gallery)"
    )
    # Random weights with frozen stages warn; a faiss request that fell back to top-k says so.
    assert method.notices() == [
        "warning: random initial weights (--no-pretrained), and the stages stem, layer1, layer2 stay frozen at "
        "them (--frozen-stages 0 trains every stage)"
    ]
    one = build_loop(tiny_config(source, target, tmp_path / "one", frozen_stages=1))
    assert one.method.notices() == [
        "warning: random initial weights (--no-pretrained), and the stages stem stay frozen at them "
        "(--frozen-stages 0 trains every stage)"
    ]
    free = build_loop(tiny_config(source, target, tmp_path / "free", frozen_stages=0, knn="faiss"))
    free.method.knn = "topk"  # what knn_backend gives on a CUDA device whose faiss build sees no GPU
    assert free.method.notices() == ["--knn faiss: this faiss build sees no GPU; neighbours by torch top-k on cpu"]
    groups = method.parameter_groups()
    assert [(g["name"], g["lr"]) for g in groups] == [("new", 0.02), ("backbone", pytest.approx(0.005))]


def test_without_the_target_there_is_no_memory_and_only_the_source_loss(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", no_target=True))
    method = loop.method
    assert method.memory is None and not method.uses_target and method.target_dataset(None) is None
    assert method.signature() == {"embedding_dim": EMBEDDING, "memory_slots": 0, "memory_dtype": "fp32"}
    assert method.provenance()["knn_backend"] is None and method.provenance()["setting"] == "source only"
    assert method.state_dict() == {"memory": None}
    # Without the target there is no neighbour search, so --knn faiss has nothing to fall back from.
    faiss = build_loop(tiny_config(source, target, tmp_path / "faiss", no_target=True, knn="faiss"))
    assert not [n for n in faiss.method.notices() if "--knn" in n]
    method.load_state_dict({"memory": None})
    output = one_step(loop, 9)  # a target batch and its features reach the method, which has no use for them
    assert set(output.parts) == {"source"} and output.state is None
    assert output.total.item() == pytest.approx(spec_source_loss(), rel=1e-6)
    with pytest.raises(AssertionError, match="^target_loss needs the exemplar memory$"):
        method.target_loss(torch.tensor(FEATURES), torch.tensor(OWN), 9)


def test_a_step_without_a_target_batch_is_the_source_loss_and_moves_no_memory(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run"))
    memory = hand_made(loop)
    seen = {}

    def network(source_images, source_labels, target_images):
        seen["labels"], seen["target"] = source_labels, target_images
        return {"source_logits": torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 3.0]])}, None

    x = LabelledBatch(torch.zeros(2, 3, 32, 16), torch.tensor([0, 3]), torch.zeros(2, dtype=torch.long),
                      torch.arange(2))
    u = UnlabelledBatch(torch.zeros(2, 3, 32, 16), torch.zeros(2, dtype=torch.long), torch.tensor(OWN))
    for batch in (None, u):  # no target batch, or one the network gave no output for
        output = loop.method.step(network, x, batch, 9)
        assert seen["labels"].tolist() == [0, 3] and (seen["target"] is None) == (batch is None)
        assert set(output.parts) == {"source"} and output.state is None
        assert output.total.item() == pytest.approx(spec_source_loss(), rel=1e-6)
    # after_step leaves the memory alone without target features or without the batch they came from.
    loop.method.after_step(StepOutput(torch.zeros(()), {}, state=None), u, 9)
    loop.method.after_step(StepOutput(torch.zeros(()), {}, state=torch.ones(2, EMBEDDING)), None, 9)
    assert loop.method.memory.features.tolist() == memory


def test_the_memory_state_round_trips_and_features_init_fills_it_with_a_bar_on_the_main_process(
    two_domains, tmp_path: Path, monkeypatch
) -> None:
    source, target = two_domains
    shown = terminal_console(monkeypatch)
    loop = build_loop(tiny_config(source, target, tmp_path / "run", memory_init="features"))
    method = loop.method
    method.before_training()
    frames = last_frames(shown.getvalue())
    images = len(loop.data.target_train)
    assert len(frames) == 1
    assert_finished_bar(frames[0], "memory init", images, images, "img")
    shown.seek(0)
    shown.truncate()
    method.run.dist = DistributedContext(rank=1, world_size=2)  # another rank's bar would garble the main one's
    method.before_training()  # the same model: the same embeddings again
    assert shown.getvalue() == ""
    expected = ecn_module.target_embeddings(
        method.model, loop.data.target_train, height=32, width=16, batch_size=32, workers=0,
        device=torch.device("cpu"), show_progress=False,
    )
    torch.testing.assert_close(method.memory.features, expected, atol=1e-5, rtol=1e-4)
    assert expected.abs().sum() > 0
    other = build_loop(tiny_config(source, target, tmp_path / "other"))
    other.method.before_training()  # zeros init: the memory stays empty
    assert other.method.memory.features.abs().sum() == 0
    other.method.load_state_dict(method.state_dict())
    assert torch.equal(other.method.memory.features, method.memory.features)


def test_rsc_replaces_the_source_logits_with_those_of_the_challenged_map(two_domains, tmp_path, monkeypatch) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", rsc=True, dropout=0.0))
    network, model = loop.method.network, loop.method.model
    assert isinstance(network.rsc, RSC)
    calls = []

    def challenge(feature_map, labels, head, eval_module=None):
        calls.append((feature_map, labels, head, eval_module))
        return feature_map.flip(0)  # another map than the input: the logits must follow it

    monkeypatch.setattr(network.rsc, "forward", challenge)
    images = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    network.train()
    out_x, _ = network(images, labels, None)
    (feature_map, seen_labels, head, eval_module), = calls
    assert torch.equal(feature_map, out_x["feature_map"]) and torch.equal(seen_labels, labels) and eval_module is model
    torch.testing.assert_close(head(feature_map), model.forward_head(feature_map)["source_logits"])
    torch.testing.assert_close(out_x["source_logits"], model.forward_head(feature_map.flip(0))["source_logits"])
    network.eval()
    network(images, labels, None)
    assert len(calls) == 1  # evaluation forwards are never challenged


def test_faiss_neighbours_are_the_ones_the_loss_weights(two_domains, tmp_path: Path, monkeypatch) -> None:
    """The loss takes faiss's neighbours as they come (here the least similar slots, to tell them from top-k);
    with ``--knn topk`` faiss is never asked."""
    pytest.importorskip("faiss")
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", knn="faiss", k=2, neighbour_start_epoch=0))
    memory = hand_made(loop)
    far = torch.tensor([[3, 0], [2, 4]])  # per feature: two slots that are not its nearest
    monkeypatch.setattr(ecn_module, "nearest_slots_faiss", lambda features, slots, k: far)
    output = one_step(loop, 1)
    expected = 0.0
    for row, own, slots in zip(FEATURES, OWN, far.tolist(), strict=True):
        z = [sum(a * b for a, b in zip(row, slot, strict=True)) / 0.05 for slot in memory]
        log_norm = math.log(sum(math.exp(v) for v in z))
        weights = {j: 0.5 for j in slots} | {own: 1.0}
        expected -= sum(w * (z[j] - log_norm) for j, w in weights.items())
    assert output.parts["target"].item() == pytest.approx(expected / 2, rel=1e-5)
    topk = build_loop(tiny_config(source, target, tmp_path / "topk", k=2, neighbour_start_epoch=0))
    hand_made(topk)
    monkeypatch.setattr(ecn_module, "nearest_slots_faiss", lambda *args: pytest.fail("faiss asked under --knn topk"))
    output = one_step(topk, 1)
    assert output.parts["target"].item() == pytest.approx(spec_target_loss(FEATURES, memory, OWN, 0.05, 2), rel=1e-5)


def test_the_source_loss_adds_the_snr_losses(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", snr_stages=("layer3",), dropout=0.0))
    network, model = loop.method.network.train(), loop.method.model
    images = torch.randn(4, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    pids = torch.tensor([0, 1, 2, 3])
    out_x, _ = network(images, pids, None)
    snr = dg_source_loss(model, out_x, pids, loop.config.dg)
    assert float(snr.detach()) > 0
    output = loop.method.step(network, LabelledBatch(images, pids, torch.zeros(4, dtype=torch.long), pids), None, 0)
    expected = source_loss(out_x["source_logits"], pids) + snr
    assert output.parts["source"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_crossdomain_mixstyle_is_refused_only_without_target_images(tmp_path: Path) -> None:
    domains = DomainsConfig("dukemtmc", tmp_path / "s", "market1501", tmp_path / "t")
    base = TrainConfig(domains=domains, model=ModelConfig(pretrained=False))
    message = ("--mixstyle-mix crossdomain mixes source with target statistics: it needs target images (not "
               "--source-only or --no-target); use --mixstyle-mix random")
    for switch in ("source_only", "no_target"):
        config = override(base, mixstyle_stages=("layer1",), mixstyle_mix="crossdomain", **{switch: True})
        with pytest.raises(EcnreidError) as refused:
            ecn_module.ECN.check_config(config)
        assert str(refused.value) == message
    accepted = [
        override(base, mixstyle_stages=("layer1",), mixstyle_mix="crossdomain"),  # with target images
        override(base, mixstyle_stages=("layer1",), mixstyle_mix="random", source_only=True),
        override(base, mixstyle_mix="crossdomain", source_only=True),  # MixStyle off: no stage
    ]
    for config in accepted:
        assert ecn_module.ECN.check_config(config) is None
