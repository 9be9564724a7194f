"""What every method inherits from ``Method``: the step's logged losses, the generic model card (measured on
one blank image in eval mode, without gradients, the mode put back), the run's announcement and the defaults."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from ecnreid.config import DomainsConfig, ModelConfig, TrainConfig, override
from ecnreid.methods.base import Method, RunContext, StepOutput
from ecnreid.runtime import DistributedContext


class Recorder(nn.Module):
    """Gives ``width`` features per image (or ``output`` when set) and records what each forward saw."""

    def __init__(self, width: int, output: Any = None) -> None:
        super().__init__()
        self.width, self.output = width, output
        self.seen: list[dict[str, Any]] = []

    def forward(self, images: torch.Tensor) -> Any:
        self.seen.append({"shape": tuple(images.shape), "device": images.device, "training": self.training,
                          "grad": torch.is_grad_enabled(), "sum": float(images.abs().sum())})
        return self.output if self.output is not None else torch.ones(images.shape[0], self.width)


class Bare(Method):
    """A method that overrides only what it must."""

    uses_target = False

    def __init__(self, config: TrainConfig, data: Any, model: nn.Module, setting: str | None = None) -> None:
        super().__init__(config, data, RunContext(torch.device("cpu")))
        self.model = model
        self.setting = setting

    def provenance(self) -> dict[str, Any]:
        return {} if self.setting is None else {"setting": self.setting}

    def parameter_groups(self) -> list[dict[str, Any]]:  # pragma: no cover - never trained
        return []

    def step(self, network, x, u, epoch):  # pragma: no cover - never trained
        raise NotImplementedError


@pytest.fixture
def config(tmp_path: Path) -> TrainConfig:
    domains = DomainsConfig("dukemtmc", tmp_path / "s", "market1501", tmp_path / "t")
    return override(TrainConfig(domains=domains, model=ModelConfig(pretrained=False)), height=24, width=8)


def test_step_values_are_the_total_and_each_part_as_floats() -> None:
    output = StepOutput(torch.tensor(1.5), {"source": torch.tensor(0.25), "target": torch.tensor(2.0)})
    assert output.values() == {"loss_total": 1.5, "loss_source": 0.25, "loss_target": 2.0}
    assert output.state is None


@pytest.mark.parametrize("training", [True, False])
def test_the_default_card_measures_one_blank_eval_image_without_gradients_and_keeps_the_mode(
    config: TrainConfig, training: bool
) -> None:
    model = Recorder(width=7).train(training)
    method = Bare(config, None, model, setting="+E+N")
    card = method.model_card()
    assert (card.feature, card.feature_dim, card.setting) == ("the model's eval-mode output, L2-normalised", 7, "+E+N")
    assert model.seen == [{"shape": (1, 3, 24, 8), "device": torch.device("cpu"), "training": False, "grad": False,
                           "sum": 0.0}]
    assert model.training is training
    assert method.model_card() == card and len(model.seen) == 1  # measured once
    assert Bare(config, None, Recorder(width=3)).model_card().setting is None


@pytest.mark.parametrize("output", [torch.ones(1, 2, 3), (torch.ones(1, 4),)])
def test_a_model_without_batch_by_dimension_features_is_refused_and_keeps_its_mode(
    config: TrainConfig, output: Any
) -> None:
    model = Recorder(width=0, output=output).train()
    with pytest.raises(ValueError, match=r"^Bare: the eval-mode model must give \[B, D\] features$"):
        Bare(config, None, model).model_card()
    assert model.training


def test_describe_names_the_method_the_domains_and_their_sizes(config: TrainConfig) -> None:
    data = SimpleNamespace(source_train=[0] * 5, target_train=[0] * 3)
    method = Bare(config, data, Recorder(width=1))
    assert method.describe() == "Bare: source dukemtmc (5 images) → target market1501 (3 train images)"


def test_the_defaults_of_a_method(config: TrainConfig) -> None:
    data = SimpleNamespace(source_train=[], target_train=[])
    method = Bare(config, data, Recorder(width=1))
    assert method.config is config and method.data is data and method.run.device == torch.device("cpu")
    assert method.run.dist == DistributedContext() and not method.run.dist.enabled
    assert method.target_dataset(None) is None and method.after_step(None, None, 0) is None  # type: ignore[arg-type]
    assert method.before_epoch(0) is None and method.before_training() is None
    assert (method.state_dict(), method.signature(), method.provenance(), method.notices()) == ({}, {}, {}, [])
    assert method.load_state_dict({"x": 1}) is None


class OneWeight(Bare):
    """A bare method with one trainable weight, so that an optimiser can be built."""

    def __init__(self, config: TrainConfig, data: Any, model: nn.Module) -> None:
        super().__init__(config, data, model)
        self.weight = nn.Parameter(torch.ones(2))

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.weight]}]  # no rate of its own: the optimiser's --lr applies


def test_the_default_optimiser_is_nesterov_sgd_stepped_at_the_configured_epochs(config: TrainConfig) -> None:
    config = override(config, lr=0.3, momentum=0.8, weight_decay=1e-3, lr_steps=(2, 4), lr_gamma=0.5)
    method = OneWeight(config, SimpleNamespace(source_train=[], target_train=[]), Recorder(width=1))
    optimizer, scheduler = method.build_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.8, 1e-3, True)
    rates = []
    for _ in range(5):  # the loop steps the scheduler once per epoch
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.3, 0.3, 0.15, 0.15, 0.075])


class Factory:
    """Records what a method asks of the loader factory."""

    transform = "the training transform"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def loader(self, dataset, batch_size, *, collate_fn, stream=0):
        self.calls.append({"dataset": dataset, "batch_size": batch_size, "collate_fn": collate_fn, "stream": stream})
        return f"loader {len(self.calls)}"


def test_the_default_loaders_shuffle_the_source_and_the_target_at_their_batch_sizes(config: TrainConfig) -> None:
    from ecnreid.data.batches import collate_labelled, collate_unlabelled
    from ecnreid.data.loaders import SOURCE_STREAM, TARGET_STREAM
    from ecnreid.data.records import ImageRecord

    config = override(config, batch_size=20)
    source = [ImageRecord("a.jpg", 1, 0), ImageRecord("b.jpg", 2, 1)]
    data = SimpleNamespace(source_train=source, target_train=[])
    factory = Factory()
    assert Bare(config, data, Recorder(width=1)).build_loaders(factory) == ("loader 1", None)  # no target used
    (call,) = factory.calls
    assert (call["batch_size"], call["collate_fn"], call["stream"]) == (20, collate_labelled, SOURCE_STREAM)
    assert call["dataset"].records == source and call["dataset"].transform == "the training transform"

    class WithTarget(Bare):
        def target_dataset(self, transform):
            return ("target images", transform)

    for target_batch, expected in ((None, 20), (12, 12)):
        factory = Factory()
        tuned = override(config, target_batch_size=target_batch)
        assert WithTarget(tuned, data, Recorder(width=1)).build_loaders(factory) == ("loader 1", "loader 2")
        target = factory.calls[1]
        assert target["dataset"] == ("target images", "the training transform")
        assert (target["batch_size"], target["collate_fn"], target["stream"]) == (
            expected, collate_unlabelled, TARGET_STREAM)


def test_a_method_needs_no_search_for_unused_parameters_unless_it_says_so(config: TrainConfig) -> None:
    assert Bare(config, SimpleNamespace(), Recorder(width=1)).ddp_find_unused_parameters() is False


def test_the_card_of_a_checkpoint_carries_its_epoch_and_the_last_evaluation(config: TrainConfig) -> None:
    method = Bare(config, None, Recorder(width=5), setting="+E")
    history = [{"epoch": 1, "loss_total": 2.0}, {"epoch": 2, "rank1": 40.0, "mAP": 20.0, "loss_total": 1.0}]
    card = method.card(history, epoch=2)
    assert (card["epoch"], card["feature_dim"], card["setting"]) == (2, 5, "+E")
    assert card["metrics"] == {"epoch": 2, "rank1": 40.0, "mAP": 20.0}
    assert method.card(history[:1], epoch=1)["metrics"] is None  # the last epoch was not evaluated


def test_a_method_without_a_model_from_its_card_says_so_by_name() -> None:
    with pytest.raises(NotImplementedError, match=r"^Bare does not rebuild its model from a model card$"):
        Bare.model_from_card(None, torch.device("cpu"))  # type: ignore[arg-type]
