"""The two-domain loop training ECN end to end on tiny data: one epoch, checkpoints, exact resume, errors,
two-process DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_ecn_method import spec_target_loss

from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.errors import EcnreidError
from ecnreid.methods.ecn import target_embeddings
from ecnreid.runstate import load_checkpoint
from ecnreid.training import build_loop, train


def tiny_config(source: Path, target: Path, out: Path, **overrides) -> TrainConfig:
    config = TrainConfig(
        domains=DomainsConfig("synthetic", source, "synthetic", target),
        out=out,
        model=ModelConfig(arch="resnet18", pretrained=False, embedding_dim=64, frozen_stages=3),
    )
    settings = dict(
        epochs=2,
        batch_size=8,
        height=32,
        width=16,
        workers=0,
        every=1,
        neighbour_start_epoch=1,
        lr_steps=(1,),
        seed=0,
        device="cpu",
        use_camera=False,  # tests that need camera invariance make a CamStyle set first
    )
    return override(config, **{**settings, **overrides})


def test_one_epoch_run_writes_everything(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    summary = train(tiny_config(source, target, tmp_path / "run", epochs=1))
    run = tmp_path / "run"
    for name in ("last.pt", "log.jsonl", "curves.png", "metrics.json", "config.json"):
        assert (run / name).is_file(), name
    assert not (run / "best.pt").exists()  # no checkpoint is chosen on the target's test labels
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    assert {"loss_total", "loss_source", "loss_target", "rank1", "mAP", "images_per_s"} <= rows[0].keys()
    assert 0.0 <= summary["final"]["rank1"] <= 100.0
    state = load_checkpoint(run / "last.pt")
    # The memory holds one unit-norm row per target image once every slot has been visited...
    memory = state["method"]["memory"]["features"]
    assert memory.shape == (24, 64)
    visited = memory.norm(dim=1) > 0
    assert torch.allclose(memory[visited].norm(dim=1), torch.ones(int(visited.sum())), atol=1e-4)
    assert state["epoch"] == 1 and state["signature"]["memory_slots"] == 24
    assert summary["camstyle"] is None and summary["setting"] == "+E+N"


def test_resume_equals_straight_run(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "straight", epochs=2))
    train(tiny_config(source, target, tmp_path / "resumed", epochs=1))
    train(tiny_config(source, target, tmp_path / "resumed", epochs=2, resume=True))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(straight["method"]["memory"]["features"], resumed["method"]["memory"]["features"])
    assert straight["history"][-1]["loss_total"] == resumed["history"][-1]["loss_total"]


def test_memory_init_features_fills_every_slot_with_its_own_embedding(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    ecn = build_loop(tiny_config(source, target, tmp_path / "run", memory_init="features")).method
    assert torch.count_nonzero(ecn.memory.features) == 0  # the published start: zeros
    ecn.before_training()
    memory = ecn.memory.features
    assert torch.allclose(memory.norm(dim=1), torch.ones(24), atol=1e-5)
    # Each slot is the embedding of its own image: the set's embeddings, recomputed, match it row for row.
    again = target_embeddings(
        ecn.model,
        ecn.data.target_train,
        height=32,
        width=16,
        batch_size=5,
        workers=0,
        device=torch.device("cpu"),
    )
    assert torch.allclose(memory, again, atol=1e-5)
    # The set-level BatchNorm centres the embeddings: they do not all share one direction.
    assert (memory @ memory.t()).mean() < 0.2
    with pytest.raises(EcnreidError, match="--memory-init"):
        tiny_config(source, target, tmp_path / "bad", memory_init="random")


def test_memory_init_happens_once_so_a_resumed_run_equals_a_straight_one(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    init = {"memory_init": "features", "every": 0}
    train(tiny_config(source, target, tmp_path / "straight", epochs=2, **init))
    train(tiny_config(source, target, tmp_path / "resumed", epochs=1, **init))
    memory = load_checkpoint(tmp_path / "resumed" / "last.pt")["method"]["memory"]["features"]
    assert bool((memory.norm(dim=1) > 0.99).all())  # no slot left at zero, visited or not
    train(tiny_config(source, target, tmp_path / "resumed", epochs=2, resume=True, **init))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["method"]["memory"]["features"]
    assert torch.equal(straight, load_checkpoint(tmp_path / "resumed" / "last.pt")["method"]["memory"]["features"])


@pytest.mark.parametrize(
    ("error", "saved"),
    [
        (KeyboardInterrupt(), True),
        (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. "), True),
        (RuntimeError("CUDA error: an illegal memory access"), False),  # a bug, not a stop: no state saved
    ],
)
def test_a_stop_saves_interrupted_weights(two_domains, tmp_path: Path, monkeypatch, error, saved) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", epochs=2, every=0))
    real_step, calls = loop.method.step, []

    def stop_on_the_fourth_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # in the second epoch (2 steps per epoch)
            raise error
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop.method, "step", stop_on_the_fourth_step)
    with pytest.raises(type(error)):
        loop.fit()
    assert (tmp_path / "run" / "interrupted.pt").exists() == saved
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # the last completed epoch is kept


def test_existing_run_is_not_overwritten(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "run", epochs=1, every=0))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(EcnreidError, match="--resume"):
        train(tiny_config(source, target, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resume_with_a_different_target_is_an_error(two_domains, tmp_path: Path) -> None:
    from conftest import make_reid_tree

    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "run", epochs=1, every=0))
    other = make_reid_tree(tmp_path / "other", ids=5, cameras=3, per_camera=2, first_pid=70)
    with pytest.raises(EcnreidError, match="cannot resume.*target"):
        train(tiny_config(source, other, tmp_path / "run", epochs=2, resume=True))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(two_domains, tmp_path: Path, monkeypatch) -> None:
    import ecnreid.methods.ecn as ecn_module

    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "run", epochs=1, every=0))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    monkeypatch.setattr(ecn_module, "source_loss", lambda logits, labels: logits.sum() * float("nan"))
    with pytest.raises(EcnreidError, match="non-finite loss at epoch 2 iteration 1"):
        train(tiny_config(source, target, tmp_path / "run", epochs=2, resume=True))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_source_only_has_no_memory_and_no_target_loss(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", epochs=1, source_only=True))
    assert loop.method.memory is None and loop.loaders()[1] is None
    row = loop.train_epoch(0)
    assert "loss_target" not in row and row["loss_source"] > 0


def test_camera_invariance_uses_the_camstyle_set(two_domains, tmp_path: Path) -> None:
    from camstyle.prepare import run_prepare
    from ecnreid.config import PrepareConfig, RuntimeConfig

    source, target = two_domains
    run_prepare(
        PrepareConfig(dataset="synthetic", root=target, method="colour", workers=0, runtime=RuntimeConfig(device="cpu"))
    )
    summary = train(tiny_config(source, target, tmp_path / "run", epochs=1, every=0, use_camera=True))
    assert summary["setting"] == "+E+C+N"
    # 24 target images in 3 cameras, each rendered in the 2 others.
    assert summary["camstyle"] == {
        "dir": str(target / "bounding_box_train_camstyle"),
        "scheme": "stargan",
        "expected": 48,
        "present": 48,
        "coverage": 1.0,
    }


def test_frozen_stages_do_not_change_in_training(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    loop = build_loop(tiny_config(source, target, tmp_path / "run", epochs=1))
    model = loop.method.model
    stem = {k: v.clone() for k, v in model.backbone.stages["stem"].state_dict().items()}
    layer4 = {k: v.clone() for k, v in model.backbone.stages["layer4"].state_dict().items()}
    loop.train_epoch(0)
    for key, value in model.backbone.stages["stem"].state_dict().items():
        assert torch.equal(value, stem[key]), key  # weights and BN running stats
    assert any(not torch.equal(v, layer4[k]) for k, v in model.backbone.stages["layer4"].state_dict().items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, results: dict) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    loop = build_loop(config)
    losses = [loop.train_epoch(epoch)["loss_total"] for epoch in range(2)]
    results[rank] = {"memory": loop.method.memory.features.clone(), "losses": losses}
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_memories_agree(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    config = tiny_config(source, target, tmp_path / "ddp", epochs=2, every=0)
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), config, results), nprocs=2, start_method="spawn")
    first, second = results[0], results[1]
    assert torch.equal(first["memory"], second["memory"])
    assert (first["memory"].norm(dim=1) > 0).sum() > 0
    assert all(torch.isfinite(torch.tensor(first["losses"] + second["losses"])))


def test_the_result_is_the_final_epoch_and_every_evaluation_is_logged(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    summary = train(tiny_config(source, target, tmp_path / "run", epochs=2, every=1))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in summary["evaluations"]] == [1, 2]
    assert summary["final"] == {k: rows[-1][k] for k in ("epoch", "rank1", "rank5", "rank10", "mAP", "mINP")}
    assert "best" not in summary and not (tmp_path / "run" / "best.pt").exists()


def test_target_loss_is_float32_under_autocast(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    ecn = build_loop(tiny_config(source, target, tmp_path / "run")).method
    generator = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(24, 64, generator=generator), dim=1)
    ecn.memory.features.copy_(memory)
    features = torch.nn.functional.normalize(torch.randn(8, 64, generator=generator), dim=1).requires_grad_()
    indices = torch.arange(8)
    reference = ecn.target_loss(features, indices, epoch=1)  # epoch 1: neighbourhood invariance is on
    by_hand = spec_target_loss(features.tolist(), memory.tolist(), indices.tolist(), beta=0.05, k=6)
    assert reference.item() == pytest.approx(by_hand, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ecn.target_loss(features, indices, epoch=1)
        logits = ecn.memory.logits(features, 0.05)
    assert under_autocast.dtype == torch.float32 and logits.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a bf16 product would be off by ~0.1 at these logit sizes, not 1e-6.
    torch.testing.assert_close(under_autocast, reference, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, features.detach() @ memory.t() / 0.05, atol=1e-5, rtol=1e-6)


def test_memory_init_takes_the_training_path(two_domains, tmp_path: Path) -> None:
    """Every backbone stage frozen (BatchNorms in eval) and no dropout: the memory init embeddings equal the
    target embeddings of a training forward pass over the whole set in one batch."""
    from ecnreid.data.image_dataset import ImageDataset
    from ecnreid.data.transforms import build_test_transform

    source, target = two_domains
    model = dataclasses.replace(tiny_config(source, target, tmp_path).model, frozen_stages=5, dropout=0.0)
    ecn = build_loop(tiny_config(source, target, tmp_path / "run", model=model)).method
    records = ecn.data.target_train
    initial = target_embeddings(
        ecn.model, records, height=32, width=16, batch_size=5, workers=0, device=torch.device("cpu")
    )
    assert ecn.model.training  # the mode is restored, frozen BatchNorms included
    dataset = ImageDataset(records, build_test_transform(32, 16))
    images = torch.stack([dataset[i][0] for i in range(len(records))])
    with torch.no_grad():
        trained_path = ecn.model(images)["target_embedding"]
    torch.testing.assert_close(initial, trained_path, atol=1e-5, rtol=1e-4)


def test_learning_rate_steps_and_gamma(two_domains, tmp_path: Path) -> None:
    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "run", epochs=3, every=0, lr_steps=(1, 2), lr_gamma=0.5))
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert [row["lr"] for row in history] == pytest.approx([0.05, 0.025, 0.025])


def test_a_checkpoint_of_the_single_step_schedule_resumes_exactly(two_domains, tmp_path: Path) -> None:
    from ecnreid.config import train_config_from_record

    source, target = two_domains
    train(tiny_config(source, target, tmp_path / "straight", epochs=2))
    train(tiny_config(source, target, tmp_path / "old", epochs=1))
    # Rewrite the checkpoint as the single-step version wrote it: StepLR's state, optim.lr_step in the config.
    path = tmp_path / "old" / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    scheduler = {k: v for k, v in state["scheduler"].items() if k != "milestones"}
    state["scheduler"] = {**scheduler, "step_size": 1}
    optim = {k: v for k, v in state["config"]["optim"].items() if k not in ("lr_steps", "lr_gamma")}
    state["config"]["optim"] = {**optim, "lr_step": 1}
    torch.save(state, path)
    assert train_config_from_record(state["config"]).optim.lr_steps == (1,)
    train(tiny_config(source, target, tmp_path / "old", epochs=2, resume=True))
    straight, resumed = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(path)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [row["lr"] for row in resumed["history"]] == [row["lr"] for row in straight["history"]]


def test_only_rank_0_returns_the_summary(monkeypatch) -> None:
    import ecnreid.training
    from ecnreid.runtime import DistributedContext

    class FinishedLoop:
        def __init__(self, config, extra_hooks=None) -> None:
            self.ctx = config

        def fit(self) -> dict:
            return {"final": {"rank1": 50.0}}

    monkeypatch.setattr(ecnreid.training, "build_loop", FinishedLoop)
    assert train(DistributedContext(rank=0, world_size=2)) == {"final": {"rank1": 50.0}}
    assert train(DistributedContext(rank=1, world_size=2)) == {}
