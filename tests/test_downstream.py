"""Downstream evaluation: episode sampler, few-shot probes (against a scipy reference), fine-tuning, the sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, tiny_overrides
from omegaconf import OmegaConf
from scipy.optimize import minimize
from scipy.special import logsumexp

from freeenergy.data import ImageSet
from freeenergy.data.synthetic import load_synthetic
from freeenergy.downstream.episodes import sample_episodes
from freeenergy.downstream.finetune import finetune, finetune_split
from freeenergy.downstream.probe import (
    LogisticOptions,
    augmented_features,
    episode_accuracies,
    extract_features,
    fit_logistic,
    summarize,
)
from freeenergy.downstream.step import run_downstream
from freeenergy.models import create_model
from freeenergy.records.checkpoints import iter_checkpoints

# tiny_data has 10 images per downstream class: episodes and fine-tuning batches must fit in them
TINY_DOWNSTREAM = [
    "downstream.fewshot.shots=[1,2]",
    "downstream.fewshot.n_query=3",
    "downstream.fewshot.episodes=20",
    "downstream.finetune.epochs=6",
    "downstream.finetune.batch_size=32",
    "downstream.finetune.images_per_class=null",
    "downstream.finetune.lr=0.1",
    "downstream.finetune.backbone_lr=0.02",
]
FINETUNE_KEYS = {
    "test_acc",
    "test_loss",
    "train_loss",
    "epochs",
    "lr",
    "backbone_lr",
    "batch_size",
    "optimizer",
    "images_per_class",
    "train_images",
    "test_images",
    "seed",
    "wall_time_s",
    "device",
    "config",
}
FEWSHOT_KEYS = {"results", "seed", "wall_time_s", "device", "config"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting


def clustered_features(
    classes: int, per_class: int, dim: int, spread: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm features around one random direction per class, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return F.normalize(features, dim=1), labels


# ---------------------------------------------------------------- episodes


def test_episodes_are_disjoint_within_their_classes_and_reproducible():
    labels = torch.arange(8).repeat_interleave(12)[torch.randperm(96, generator=torch.Generator().manual_seed(1))]
    episodes = sample_episodes(labels, n_way=5, k_shot=3, n_query=4, num_episodes=50, seed=7)
    assert episodes.support.shape == (50, 5, 3) and episodes.query.shape == (50, 5, 4)
    for e in range(50):
        classes = episodes.classes[e]
        assert len(set(classes.tolist())) == 5
        support, query = set(episodes.support[e].flatten().tolist()), set(episodes.query[e].flatten().tolist())
        assert len(support) == 15 and len(query) == 20 and not support & query
        assert (labels[episodes.support[e]] == classes[:, None]).all()
        assert (labels[episodes.query[e]] == classes[:, None]).all()
    again = sample_episodes(labels, 5, 3, 4, 50, seed=7)
    other = sample_episodes(labels, 5, 3, 4, 50, seed=8)
    assert torch.equal(again.support, episodes.support) and torch.equal(again.query, episodes.query)
    assert not torch.equal(other.support, episodes.support)


@pytest.mark.parametrize(
    "n_way, k_shot, n_query, match",
    [
        (9, 1, 1, "n_way=9 exceeds the 8 classes"),
        (5, 10, 3, "k_shot \\+ n_query = 13 exceeds the 12"),
        (5, 0, 3, "k_shot=0"),
    ],
)
def test_sampler_refuses_episodes_the_data_cannot_supply(n_way, k_shot, n_query, match):
    with pytest.raises(ValueError, match=match):
        sample_episodes(torch.arange(8).repeat_interleave(12), n_way, k_shot, n_query, 10, seed=0)


# ---------------------------------------------------------------- probes


def reference_logistic(
    features: np.ndarray, labels: np.ndarray, n_classes: int, C: float
) -> tuple[np.ndarray, np.ndarray]:
    """One episode with scipy's L-BFGS-B: min C·Σ CE + ½‖W‖² (intercept not penalised), as scikit-learn."""
    dim = features.shape[1]
    targets = np.eye(n_classes)[labels]

    def objective(params):
        weight, bias = params[: n_classes * dim].reshape(n_classes, dim), params[n_classes * dim :]
        logits = features @ weight.T + bias
        log_norm = logsumexp(logits, axis=1)
        residual = C * (np.exp(logits - log_norm[:, None]) - targets)
        value = C * (log_norm - (logits * targets).sum(1)).sum() + 0.5 * (weight**2).sum()
        return value, np.concatenate([(residual.T @ features + weight).ravel(), residual.sum(0)])

    result = minimize(
        objective,
        np.zeros(n_classes * (dim + 1)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-15},
    )
    return result.x[: n_classes * dim].reshape(n_classes, dim), result.x[n_classes * dim :]


@pytest.mark.parametrize("k_shot, C", [(1, 1.0), (5, 1.0), (5, 10.0)])
def test_batched_logistic_regression_matches_a_reference_solver(k_shot, C):
    features, labels = clustered_features(classes=10, per_class=20, dim=32, spread=1.0)
    episodes = sample_episodes(labels, 5, k_shot, 5, num_episodes=6, seed=3)
    support = features[episodes.support].flatten(1, 2).double()
    support_labels = torch.arange(5).repeat_interleave(k_shot).expand(6, -1)
    weight, bias = fit_logistic(support, support_labels, 5, LogisticOptions(C=C, max_iter=500, tolerance=1e-8))
    query = features[episodes.query].flatten(1, 2).double()
    for e in range(6):
        ref_weight, ref_bias = reference_logistic(support[e].numpy(), support_labels[e].numpy(), 5, C)
        np.testing.assert_allclose(weight[e].numpy(), ref_weight, atol=1e-5)
        # the intercept is defined up to a common shift (softmax), so compare centred intercepts
        np.testing.assert_allclose((bias[e] - bias[e].mean()).numpy(), ref_bias - ref_bias.mean(), atol=1e-5)
        ref_predictions = (query[e].numpy() @ ref_weight.T + ref_bias).argmax(1)
        assert (ref_predictions == (query[e] @ weight[e].T + bias[e]).argmax(1).numpy()).all()


@pytest.mark.parametrize("classifier", ["logistic", "centroid"])
def test_probes_separate_separable_features_and_are_at_chance_on_random_labels(classifier):
    features, labels = clustered_features(classes=10, per_class=30, dim=64, spread=0.05)
    separable = episode_accuracies(features, sample_episodes(labels, 5, 1, 15, 100, seed=0), classifier)
    assert separable.min() == 1.0
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    random = summarize(
        episode_accuracies(features, sample_episodes(shuffled, 5, 5, 15, 400, seed=0), classifier, episode_batch=150)
    )
    assert abs(random.mean_acc - 0.2) < 0.02 and random.episodes == 400


def test_support_views_enter_the_support_set_only():
    features, labels = clustered_features(classes=6, per_class=20, dim=16, spread=0.05)
    episodes = sample_episodes(labels, 5, 1, 15, 30, seed=0)
    corrupted = torch.stack([features, torch.randn_like(features)])  # view 1: noise
    assert episode_accuracies(features, episodes, "centroid").min() == 1.0
    # noisy support views pull the centroids away, while the query set stays the clean view 0
    assert episode_accuracies(corrupted, episodes, "centroid").mean() < 0.9


def test_confidence_interval_is_student_t_standard_errors():
    score = summarize(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert score.mean_acc == 0.5 and score.episodes == 4
    assert score.ci95 == pytest.approx(3.182446 * np.std([0, 1, 0, 1], ddof=1) / 2)  # t(0.975, 3 df)


def test_features_are_unit_norm_eval_mode_and_views_reproducible():
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=3, width=8).train()
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    preprocess = lambda x: x.float() / 128 - 1  # noqa: E731
    plain = extract_features(model, images, preprocess, batch_size=4)
    assert model.training and torch.allclose(plain.norm(dim=1), torch.ones(10))
    # independent of the batch: batch norm uses its running statistics
    torch.testing.assert_close(extract_features(model, images, preprocess, batch_size=10), plain)
    views = augmented_features(model, images, preprocess, 4, views=2, padding=2, flip=True, seed=0)
    assert views.shape == (3, 10, plain.shape[1])
    torch.testing.assert_close(views[0], plain)
    assert not torch.allclose(views[1], plain)
    torch.testing.assert_close(augmented_features(model, images, preprocess, 4, 2, 2, True, seed=0), views)


# ---------------------------------------------------------------- fine-tuning


def colour_classes(classes: int, per_class: int, size: int = 8, seed: int = 0) -> ImageSet:
    """Noisy uint8 images whose class is their mean colour: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=generator) * 200 + 28
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = colours[labels] + 25 * torch.randn(len(labels), 3, size, size, generator=generator)
    return ImageSet(images.clamp(0, 255).to(torch.uint8), labels, [f"c{i}" for i in range(classes)])


def test_finetune_split_is_per_class_seeded_and_capped():
    images = colour_classes(classes=4, per_class=20)
    train, test = finetune_split(images, test_fraction=0.25, images_per_class=10, seed=0)
    assert torch.bincount(train.labels).tolist() == [10] * 4 and torch.bincount(test.labels).tolist() == [5] * 4
    again, _ = finetune_split(images, 0.25, 10, seed=0)
    assert torch.equal(again.images, train.images)
    uncapped, _ = finetune_split(images, 0.25, None, seed=0)
    assert len(uncapped) == 60
    overlap = {bytes(x.numpy()) for x in train.images} & {bytes(x.numpy()) for x in test.images}
    assert not overlap


def test_finetuning_improves_over_the_fresh_head_and_leaves_the_input_model_alone():
    images = colour_classes(classes=4, per_class=40)
    train, test = finetune_split(images, 0.25, None, seed=0)
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=9, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft_cfg = OmegaConf.create(
        {
            "epochs": 8,
            "batch_size": 16,
            "optimizer": "sgd",
            "lr": 0.1,
            "backbone_lr": 0.02,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "augment": {"padding": 1, "flip": True},
        }
    )
    result = finetune(
        model, (train.images, train.labels), (test.images, test.labels), lambda x: x.float() / 128 - 1, ft_cfg, seed=0
    )
    assert result.steps == 8 * (120 // 16)
    assert result.test_acc >= 0.9 and result.test_acc > result.initial_test_acc + 0.3
    assert result.test_loss < result.initial_test_loss
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.get_classifier().out_features == 9


def test_finetuning_on_the_default_data_improves_over_the_untrained_head(tmp_path):
    data = load_synthetic(root=str(tmp_path), image_size=8, images_per_class=30)
    train, test = finetune_split(data.downstream, 0.25, None, seed=0)
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=64, width=8)
    ft_cfg = OmegaConf.create(
        {
            "epochs": 8,
            "batch_size": 32,
            "optimizer": "sgd",
            "lr": 0.1,
            "backbone_lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "augment": {"padding": 1, "flip": True},
        }
    )
    result = finetune(model, (train.images, train.labels), (test.images, test.labels), data.normalize, ft_cfg, seed=0)
    assert result.initial_test_loss == pytest.approx(np.log(20), abs=0.1)  # a fresh head: near uniform
    assert result.test_loss < result.initial_test_loss - 0.2 and result.test_acc > result.initial_test_acc


# ---------------------------------------------------------------- the sweep


def tiny_cfg(tiny_experiment, *overrides: str):
    return compose_config(tiny_overrides(tiny_experiment.path.parent) + TINY_DOWNSTREAM + list(overrides))


def test_sweep_writes_both_records_skips_finished_ones_and_survives_a_broken_checkpoint(tiny_experiment):
    checkpoints = list(iter_checkpoints(tiny_experiment.path))
    checkpoints[0].model_path.write_bytes(b"not a checkpoint")
    outcomes = run_downstream(tiny_cfg(tiny_experiment))
    assert [o.status for o in outcomes] == ["failed", "evaluated", "evaluated", "evaluated"]
    assert not checkpoints[0].has_record("finetune") and not checkpoints[0].has_record("fewshot")
    for checkpoint in checkpoints[1:]:
        finetuned = checkpoint.read_record("finetune")
        assert FINETUNE_KEYS <= set(finetuned)
        assert finetuned["train_images"] == 160 and finetuned["test_images"] == 40  # 20 classes × (8 + 2)
        assert 0 <= finetuned["test_acc"] <= 1 and np.isfinite(finetuned["test_loss"]) and finetuned["steps"] == 30
        fewshot = checkpoint.read_record("fewshot")
        assert FEWSHOT_KEYS <= set(fewshot)
        settings = [(r["k_shot"], r["classifier"]) for r in fewshot["results"]]
        assert settings == [(1, "logistic"), (1, "centroid"), (2, "logistic"), (2, "centroid")]
        assert all(r["episodes"] == 20 and r["n_way"] == 5 and 0 <= r["mean_acc"] <= 1 for r in fewshot["results"])
    mtimes = [c.record_path("fewshot").stat().st_mtime_ns for c in checkpoints[1:]]
    checkpoints[1].record_path("fewshot").unlink()
    rerun = run_downstream(tiny_cfg(tiny_experiment))
    assert [o.status for o in rerun] == ["failed", "evaluated", "skipped", "skipped"]
    assert set(rerun[1].records) == {"fewshot"}  # only the missing kind is redone
    assert mtimes[1:] == [c.record_path("fewshot").stat().st_mtime_ns for c in checkpoints[2:]]


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "downstream.fewshot.shots=[1,8]",
            r"downstream.fewshot.shots=\[1, 8\].*K \+ n_query = 8 \+ 3 exceeds the 10 images",
        ),
        ("downstream.fewshot.n_way=21", r"downstream.fewshot.n_way=21.*at most the 20 downstream classes"),
        ("downstream.fewshot.episodes=0", r"downstream.fewshot.episodes=0 is not allowed: an integer in \[1, 100000\]"),
        ("downstream.finetune.epochs=0", r"downstream.finetune.epochs=0 is not allowed: an integer in \[1, 10000\]"),
        ("downstream.finetune.batch_size=500", r"downstream.finetune.batch_size=500.*at most the 160"),
        ("downstream.kinds=[finetune,probe]", r"downstream.kinds=\['finetune', 'probe'\].*each one of \['finetune'"),
        ("downstream.kinds=fewshot", r"downstream.kinds='fewshot'.*in brackets, e.g. 'downstream.kinds=\[fewshot\]'"),
    ],
)
def test_bad_config_is_refused_before_any_compute(tiny_experiment, override, match):
    with pytest.raises(ValueError, match=match):
        run_downstream(tiny_cfg(tiny_experiment, override))
    assert not any(c.has_record("finetune") or c.has_record("fewshot") for c in iter_checkpoints(tiny_experiment.path))
