"""Influence embeddings, InfEmbed slices, InfEmbed-Rule, opponents and coherence (issue 7), on real trained models."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F

from core.errors import SliceScopeError
from core.extract import scan
from core.influence import (
    InfluenceEmbedder,
    InfluenceParams,
    RuleParams,
    compare_slicings,
    default_layers,
    infembed_rule,
    infembed_slices,
    influence_embeddings,
    normalised_kmeans,
    rank_opponents,
    record_influence_params,
    representation_source,
    rule_slices,
    slice_coherence,
    slice_opponents,
    slicing_coherence,
    training_embeddings,
)
from core.slicing import SliceParams, find_slices
from core.training import attach_training_data, training_data
from core.workspace import Workspace
from tests.helpers import SMALL_INFLUENCE, copy_workspace, small_scan_config

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


# -- a tiny model whose exact influence is computable ---------------------------------------------


class TinyMLP(nn.Module):
    def __init__(self, inputs: int = 5, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(x)))


def blobs(n: int, seed: int, spread: float = 1.0, classes: int = 3, inputs: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, inputs, generator=torch.Generator().manual_seed(99)) * 2
    labels = torch.arange(n) % classes
    return (centres[labels] + spread * torch.randn(n, inputs, generator=generator)).double(), labels


def fit_to_convergence(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Full-batch L-BFGS with a little weight decay: near a minimum, as influence functions assume."""
    model = model.double()
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x), y) + 1e-3 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    optimiser.step(closure)
    return model.eval()


def exact_influence(model: nn.Module, names: list[str], train: tuple, test: tuple, damping: float) -> np.ndarray:
    """∇L(z')ᵀ (H + damping·I)⁻¹ ∇L(z) for every (training, test) pair, with H the full Hessian of the mean training loss."""
    parameters = dict(model.named_parameters())
    shapes = [parameters[name].shape for name in names]
    flat = torch.cat([parameters[name].detach().reshape(-1) for name in names])

    def unflatten(vector):
        pieces = torch.split(vector, [int(np.prod(shape)) for shape in shapes])
        return {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}

    def loss(vector, x, y):
        return F.cross_entropy(torch.func.functional_call(model, unflatten(vector), (x,)), y)

    hessian = torch.autograd.functional.hessian(lambda vector: loss(vector, *train), flat) + damping * torch.eye(len(flat), dtype=flat.dtype)
    per_example = torch.func.vmap(torch.func.grad(lambda vector, x, y: loss(vector, x[None], y[None])), in_dims=(None, 0, 0))
    return (per_example(flat, *train) @ torch.linalg.solve(hessian, per_example(flat, *test).T)).numpy()


@pytest.mark.parametrize("layers", [None, ("head",)], ids=["all-layers", "head-only"])
def test_embedding_dot_products_rank_pairs_like_exact_influence(tmp_path, layers):
    train, test = blobs(240, seed=1), blobs(45, seed=2, spread=1.5)
    torch.manual_seed(0)
    model = fit_to_convergence(TinyMLP(), *train)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")

    def embed(dimension: int) -> tuple[InfluenceEmbedder, np.ndarray]:
        params = InfluenceParams(layers=layers, arnoldi_dim=200, embedding_dim=dimension, hessian_images=240, damping=0.01)
        embedder = InfluenceEmbedder(model, params).fit([train], tmp_path / "mlp.pt")
        return embedder, embedder.transform([train]) @ embedder.transform([test]).T

    embedder, ours = embed(200)
    exact = exact_influence(model, embedder.parameter_names_, train, test, damping=0.01)
    # Held-out pairs: every test point is new to the model, each paired with every training point.
    assert spearmanr(exact.ravel(), ours.ravel()).statistic >= 0.9
    _, coarse = embed(2)
    assert spearmanr(exact.ravel(), coarse.ravel()).statistic < spearmanr(exact.ravel(), ours.ravel()).statistic


def test_per_example_gradients_are_one_batched_call_that_matches_a_loop():
    from core.demo.model import build_demo_cnn

    torch.manual_seed(0)
    model = build_demo_cnn().eval()
    images, labels = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 0, 1])
    embedder = InfluenceEmbedder(model)
    batched = embedder.per_example_gradients(images, labels)
    weights = [dict(model.named_parameters())[name] for name in embedder.parameter_names_]
    for row, (image, label) in enumerate(zip(images, labels)):
        single = torch.autograd.grad(F.cross_entropy(model(image[None]), label[None]), weights)
        torch.testing.assert_close(batched[row], torch.cat([g.reshape(-1) for g in single]), rtol=1e-4, atol=1e-6)


def test_default_layers_are_the_last_block_and_the_head_within_a_parameter_budget():
    import torchvision

    from core.demo.model import build_demo_cnn

    assert default_layers(build_demo_cnn()) == ("features.11", "features.12", "classifier")  # 37k parameters: within budget
    resnet = torchvision.models.resnet18(weights=None, num_classes=3)
    assert default_layers(resnet, budget=10_000_000) == ("layer4.1", "fc")  # the paper's choice, when the machine can afford it
    # Its 4.7M parameters took an estimated 2 hours on 2 cores: by default only the layers nearest the output that fit.
    assert default_layers(resnet) == ("layer4.1.bn2", "fc")
    assert default_layers(resnet, budget=10) == ("fc",)  # never nothing
    assert default_layers(TinyMLP()) == ("hidden", "head")
    with pytest.raises(SliceScopeError, match="no layer named 'layer9'"):
        InfluenceEmbedder(TinyMLP(), InfluenceParams(layers=("layer9",)))
    with pytest.raises(SliceScopeError, match="Arnoldi dimension"):
        InfluenceParams(arnoldi_dim=10, embedding_dim=20)


def test_opponents_of_a_slice_are_the_mislabelled_training_images(tmp_path):
    """Class-0 training points relabelled 1 pull the class-0 test points of their region the wrong way."""

    def two_blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 2
        noise = 0.7 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        return (noise + torch.stack([torch.where(labels == 0, -1.5, 1.5), torch.zeros(n)], dim=1)).double(), labels

    x, y = two_blobs(200, seed=0)
    flipped = torch.zeros(len(y), dtype=torch.bool)
    flipped[torch.nonzero((y == 0) & (x[:, 1] > 0.3)).ravel()[:15]] = True
    noisy = torch.where(flipped, 1 - y, y)
    torch.manual_seed(0)
    model = fit_to_convergence(nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)), x, noisy)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    embedder = InfluenceEmbedder(model, InfluenceParams(arnoldi_dim=100, embedding_dim=60, hessian_images=200)).fit([(x, noisy)], tmp_path / "mlp.pt")
    test_x, test_y = two_blobs(80, seed=1)
    in_region = ((test_y == 0) & (test_x[:, 1] > 0.3)).numpy()
    training, slice_embeddings = embedder.transform([(x, noisy)]), embedder.transform([(test_x, test_y)])[in_region]

    rows, scores = rank_opponents(training, slice_embeddings, k=10)
    assert flipped[rows].all(), "the strongest opponents should be the mislabelled training images"
    assert (np.diff(scores) >= 0).all() and (scores < 0).all(), "most harmful (most negative) first"
    np.testing.assert_allclose(scores, training[rows] @ slice_embeddings.sum(axis=0), rtol=1e-5)
    proponents = np.argsort(-(training @ slice_embeddings.sum(axis=0)))[:10]
    assert not flipped[proponents].any()
    training[rows[0]] = np.nan  # an unreadable training image is never an opponent
    assert rows[0] not in rank_opponents(training, slice_embeddings, k=10)[0]


# -- clustering -----------------------------------------------------------------------------------


def directional_clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three directions in 6-D, each with points of very different lengths (influence embeddings' norms vary a lot)."""
    rng = np.random.default_rng(seed)
    directions = np.eye(6)[:3]
    truth = np.repeat(np.arange(3), 40)
    lengths = rng.choice([0.5, 3.0, 20.0], size=len(truth))
    vectors = (directions[truth] + 0.08 * rng.normal(size=(len(truth), 6))) * lengths[:, None]
    return vectors, truth


def test_normalised_kmeans_has_unit_centroids_and_groups_by_direction():
    vectors, truth = directional_clusters()
    labels, centroids = normalised_kmeans(vectors, 3, seed=0)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    assert pd.crosstab(labels, truth).gt(0).sum(axis=1).eq(1).all(), "each cluster should hold one direction"
    # A fixed point: every image sits with the unit centroid it is nearest to, and each centroid is its members' normalised mean.
    np.testing.assert_array_equal(labels, (vectors @ centroids.T).argmax(axis=1))
    for cluster in range(3):
        mean = vectors[labels == cluster].mean(axis=0)
        np.testing.assert_allclose(centroids[cluster], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-6)
    again, _ = normalised_kmeans(vectors, 3, seed=0)
    np.testing.assert_array_equal(again, labels)
    with pytest.raises(SliceScopeError, match="k = 200"):
        normalised_kmeans(vectors, 200)


def test_infembed_rule_returns_the_largest_slices_that_satisfy_the_rule():
    rng = np.random.default_rng(0)
    vectors, truth = directional_clusters()
    vectors = np.vstack([vectors, 5 * np.eye(6)[3] + 0.3 * rng.normal(size=(60, 6))])
    truth = np.concatenate([truth, np.full(60, 3)])
    correct = rng.random(len(truth)) < np.array([0.95, 0.9, 0.97, 0.1])[truth]
    params = RuleParams(max_accuracy=0.4, min_size=20, branching=3)
    result = infembed_rule(vectors, correct, params)

    assert (result.slices["size"] >= params.min_size).all()
    assert (result.flagged["accuracy"] <= params.max_accuracy).all()
    assert (result.slices.loc[~result.slices["flagged"], "accuracy"] > params.max_accuracy).all()
    # The failing group is found whole, as one flagged slice, and not split further.
    assert len(result.flagged) == 1 and set(np.flatnonzero(result.slice_ids == result.flagged["slice"].iat[0])) == set(np.flatnonzero(truth == 3))
    # Paths: the slices partition the images; every node's size is its children's total; ids match paths.
    tree = result.tree.set_index("path")
    assert tree.loc["", "size"] == len(vectors) and pd.isna(tree.loc["", "parent"])
    for path, node in tree.iterrows():
        children = tree[tree["parent"] == path]
        assert node["leaf"] == children.empty
        if not node["leaf"]:
            assert children["size"].sum() == node["size"] and node["accuracy"] > params.max_accuracy
            assert all(child.startswith(f"{path}/" if path else "") and child.count("/") == path.count("/") + bool(path) for child in children.index)
    leaves = tree[tree["leaf"]]
    assert sorted(leaves["slice"]) == list(range(len(result.slices)))
    for row in result.slices.itertuples():
        members = result.slice_ids == row.slice
        assert members.sum() == row.size == leaves.loc[row.path, "size"]
        assert correct[members].mean() == pytest.approx(row.accuracy)
    assert list(result.slices["flagged"]) == sorted(result.slices["flagged"], reverse=True), "flagged slices come first"


def test_coherence_is_the_kmeans_objective_and_prefers_the_true_slices():
    vectors, truth = directional_clusters()
    table = slice_coherence(vectors, truth).set_index("slice")
    members = vectors[truth == 1]
    assert table.loc[1, "coherence"] == pytest.approx(((members - members.mean(axis=0)) ** 2).sum())
    assert table.loc[1, "mean_coherence"] == pytest.approx(table.loc[1, "coherence"] / 40)
    shuffled = np.random.default_rng(1).permutation(truth)
    assert slicing_coherence(vectors, truth) < slicing_coherence(vectors, shuffled)
    assert slicing_coherence(vectors, np.zeros(len(vectors), int)) == pytest.approx(((vectors - vectors.mean(axis=0)) ** 2).sum())


# -- workspaces -------------------------------------------------------------------------------------


def test_without_training_data_the_error_names_the_command_that_fixes_it(tiny_demo, image_folder, small_net_checkpoint, tmp_path):
    demo = copy_workspace(tiny_demo, tmp_path, attach=False)
    assert training_data(demo) is None
    with pytest.raises(SliceScopeError) as error:
        find_slices(demo, "influence", SliceParams(k=3))
    message = str(error.value)
    assert "does not record the training data" in message and "\n" not in message
    assert f"python -m core attach-train {demo.path} --data {tiny_demo / 'data' / 'metadata.csv'} --split train" in message

    scanned = scan(small_scan_config(image_folder, small_net_checkpoint, tmp_path / "scanned"))
    with pytest.raises(SliceScopeError, match=rf"attach-train {scanned.path} --data PATH \[--split NAME\]"):
        influence_embeddings(scanned)
    wrong = tmp_path / "pears"
    (wrong / "apple").mkdir(parents=True)
    shutil.copy(image_folder / "apple" / "apple_00.png", wrong / "apple" / "apple_00.png")
    pd.DataFrame({"path": ["apple/apple_00.png"], "label": ["pear"]}).to_csv(wrong / "train.csv", index=False)
    with pytest.raises(SliceScopeError, match="training label 'pear' is not one of the model's classes"):
        attach_training_data(scanned, wrong / "train.csv")


def test_influence_is_a_cached_representation_keyed_by_its_training_data_and_settings(tiny_demo, tmp_path):
    workspace = copy_workspace(tiny_demo, tmp_path, attach=True)
    embeddings = influence_embeddings(workspace)
    assert embeddings.shape == (len(workspace.images), SMALL_INFLUENCE.embedding_dim) and np.isfinite(embeddings).all()
    assert training_embeddings(workspace).shape == (training_data(workspace).num_images, SMALL_INFLUENCE.embedding_dim)
    np.testing.assert_array_equal(workspace.representation("influence"), embeddings)

    infembed = infembed_slices(workspace, SliceParams(k=3))
    assert sorted(set(infembed)) == [0, 1, 2] and list(np.bincount(infembed)) == sorted(np.bincount(infembed), reverse=True)
    # The app and the CLI slice "influence" through find_slices: that is InfEmbed, from its cache.
    np.testing.assert_array_equal(find_slices(workspace, "influence", SliceParams(k=3)), infembed)
    key = workspace.derived_path("infembed_slices", {"k": 3, "seed": 0, "representation_source": representation_source(workspace)}, ".npy")
    assert key.is_file()

    rule = rule_slices(workspace, RuleParams(min_size=8))
    assert (rule.slices["size"] >= 8).all() and len(rule.slice_ids) == len(workspace.images)
    worst = int(pd.Series(workspace.images["correct"].to_numpy()).groupby(infembed).mean().idxmin())
    opponents = slice_opponents(workspace, infembed == worst, k=5)
    assert list(opponents.columns) == ["rank", "image_id", "path", "file", "label", "influence"]
    assert len(opponents) == 5 and opponents["influence"].is_monotonic_increasing
    assert all(Path(file).is_file() for file in opponents["file"])

    comparison = compare_slicings(workspace, k=3)
    assert list(comparison["representation"]) == ["attribution", "features", "influence"]
    assert comparison["coherence_share"].between(0, 1).all()

    # Other settings are another source: the slices of the old embeddings are not reused, nor overwritten.
    attach_training_data(workspace, tiny_demo / "data" / "metadata.csv", "train")
    record_influence_params(workspace, InfluenceParams(arnoldi_dim=40, embedding_dim=10, hessian_images=96))
    new_key = workspace.derived_path("infembed_slices", {"k": 3, "seed": 0, "representation_source": representation_source(workspace)}, ".npy")
    assert new_key != key and key.is_file()
    assert influence_embeddings(workspace).shape == (len(workspace.images), 10)


def test_scan_records_the_training_data(image_folder, small_net_checkpoint, tmp_path):
    result = run_cli(
        "scan", "--data", str(image_folder), "--model", str(small_net_checkpoint), "--factory", "tests.helpers:build_small_net",
        "--num-classes", "3", "--image-size", "32", "--normalize", "none", "--train-data", str(image_folder), "--out", str(tmp_path / "ws"),
    )
    assert result.returncode == 0, result.stderr
    assert "training data recorded: 18 images" in result.stdout
    workspace = Workspace(tmp_path / "ws")
    assert training_data(workspace).data == image_folder.resolve()
    embeddings = influence_embeddings(workspace, InfluenceParams(arnoldi_dim=20, embedding_dim=8, hessian_images=18))
    assert embeddings.shape == (18, 8)


def test_cli_attach_train_then_influence_slices(tiny_demo, tmp_path):
    workspace = copy_workspace(tiny_demo, tmp_path, attach=False)
    out = tmp_path / "slices.csv"
    refused = run_cli("slices", str(workspace.path), "--method", "influence", "--k", "3", "--out", str(out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    command = refused.stderr.strip().splitlines()[-1].split("attach it with: python -m core ", 1)[1].split()
    attached = run_cli(*command, "--arnoldi-dim", "40", "--embedding-dim", "20")
    assert attached.returncode == 0, attached.stderr
    assert "attached 96 training images" in attached.stdout and "P = 40, D = 20" in attached.stdout

    result = run_cli("slices", str(workspace.path), "--method", "influence", "--k", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "computing influence embeddings, once: about" in result.stdout
    slices = pd.read_csv(out)
    assert list(slices.columns) == ["path", "label", "prediction", "confidence", "slice", "flagged", "slice_accuracy", "rest_accuracy",
                                   "slice_accuracy_low", "slice_accuracy_high", "q_value", "slice_description", "slice_metadata", "x", "y"]
    assert set(slices["slice"]) == {0, 1, 2} and len(slices) == len(workspace.images)

    rule = run_cli("slices", str(workspace.path), "--method", "influence-rule", "--min-size", "8", "--out", str(out))
    assert rule.returncode == 0, rule.stderr
    assert "computing influence embeddings" not in rule.stdout, "the embeddings should come from the cache"
    slices = pd.read_csv(out, keep_default_na=False)
    assert list(slices.columns)[-2:] == ["slice_path", "rule_holds"] and "flagged" in slices.columns
    assert slices.groupby("slice").size().min() >= 8


def test_a_loss_without_curvature_is_explained_not_a_captum_traceback(tmp_path):
    """A head whose logits saturate on every Hessian image: the loss is flat to float precision, the Krylov basis empty."""
    model = TinyMLP().double()
    x, labels = blobs(30, seed=0)
    with torch.no_grad():
        model.hidden.weight.zero_()
        model.hidden.bias.fill_(1.0)
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1e4, 0.0, 0.0], dtype=torch.float64))
    zero_loss = torch.zeros_like(labels)  # every image labelled class 0, which the head predicts with certainty
    torch.save(model.state_dict(), tmp_path / "flat.pt")
    with pytest.raises(SliceScopeError, match="the training loss has no curvature at layers hidden, head"):
        InfluenceEmbedder(model, InfluenceParams(arnoldi_dim=20, embedding_dim=5, hessian_images=30)).fit([(x.double(), zero_loss)], tmp_path / "flat.pt")
