"""Every metric on inputs with a known answer."""

import numpy as np
import pytest

from concept_edit.evaluation import metrics


def test_accuracy_and_per_concept():
    row = metrics.accuracy(["a", "b", "a"], ["a", "a", "a"])
    assert {k: row[k] for k in ("accuracy", "n", "correct")} == {"accuracy": 2 / 3, "n": 3, "correct": 2}
    per = metrics.per_concept_accuracy(["cat", "dog", "dog", "dog"], ["cat", "cat", "dog", "dog"])
    assert [(v["accuracy"], v["n"], v["correct"]) for v in per.values()] == [(0.5, 2, 1), (1.0, 2, 2)]
    assert per["dog"]["ci95"] == [round(x, 4) for x in metrics.wilson(2, 2)]
    assert metrics.target_and_others({"a": {"accuracy": 0.1}, "b": {"accuracy": 0.8}, "c": {"accuracy": 0.6}}, "a") == (
        0.1,
        pytest.approx(0.7),
    )
    with pytest.raises(ValueError, match="not a concept"):
        metrics.target_and_others({"a": {"accuracy": 1.0}}, "z")


def test_distribution_and_uce_deviation():
    shares = metrics.distribution(["male"] * 9 + ["female"], ["male", "female"])
    assert shares == {"male": 0.9, "female": pytest.approx(0.1)}
    # UCE's Delta = |p_desired - p_actual| / p_desired: 0.9 male against 0.5 desired -> 0.8
    assert metrics.deviation(shares) == pytest.approx(0.8)
    assert metrics.deviation({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}) == 0.0
    # one colour of eight drawn every time: |1/8 - 1|/(1/8) = 7 for it, 1 for the seven others -> mean 14/8
    colours = ["red", "a", "b", "c", "d", "e", "f", "g"]
    assert metrics.deviation({c: float(c == "red") for c in colours}) == pytest.approx(14 / 8)


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0, 0, 0, 0])
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(5.0, abs=1e-6)  # same covariance: ||shift||^2
    # N(0, I) vs N(0, 4I) in d dims: Tr(I + 4I - 2 * 2I) = d; the sample estimate approaches it
    a, b = rng.normal(size=(20000, 3)), 2 * rng.normal(size=(20000, 3))
    assert metrics.frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError):
        metrics.frechet_distance(x[:1], x)


def test_frechet_statistics_gathered_in_chunks_equal_the_batch_formula():
    """Issue 29: sums and Gram matrices chunk by chunk give np.mean / np.cov over all rows, even for features
    whose mean dwarfs their spread (the shift keeps the Gram from cancelling), and the same distance."""
    from scipy import linalg

    from concept_edit.evaluation.frechet import FrechetStats, frechet_distance

    rng = np.random.default_rng(1)
    a = 1e4 + rng.normal(size=(1000, 8)) @ rng.normal(size=(8, 8))  # mean 1e4, spread ~3
    b = 1e4 + 0.5 + rng.normal(size=(700, 8))
    stats_a, stats_b = FrechetStats(), FrechetStats()
    for start in range(0, len(a), 97):  # uneven chunks, the last one short
        stats_a.add(a[start : start + 97])
    for start in range(0, len(b), 256):
        stats_b.add(b[start : start + 256])
    assert stats_a.n == 1000
    np.testing.assert_allclose(stats_a.mean, a.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats_a.cov, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-11)
    naive = (a.T @ a - len(a) * np.outer(a.mean(0), a.mean(0))) / (len(a) - 1)  # what an unshifted Gram gives
    assert not np.allclose(naive, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-11)  # the shift makes the line above
    mu_a, mu_b, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    batch = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(stats_a, stats_b) == pytest.approx(batch, rel=1e-9)
    assert metrics.frechet_distance(a, b) == pytest.approx(batch, rel=1e-9)
    with pytest.raises(ValueError, match="width 3 added to statistics of width 8"):
        stats_a.add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="need at least 2"):
        _ = FrechetStats().add(a[:1]).cov


def test_cosine_distance_known_answers():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_distance(a, b), [0.0, 2.0, 1.0], atol=1e-12)


def test_image_change_is_zero_for_identical_images_and_names_its_metric():
    from concept_edit.evaluation.features import make_features
    from concept_edit.worlds.shapes.world import Scene, render

    oracle = make_features("shapes-oracle")  # the shapes world's own features, found by name
    images = np.stack([render(Scene("star", "red", "dotted", s)) for s in range(4)])
    other = np.stack([render(Scene("ring", "blue", "striped", s)) for s in range(4)])
    same = metrics.image_change(images, images, features=oracle)
    assert same["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["metric"] in ("lpips", "oracle-feature-cosine-distance")
    assert metrics.image_change(images, other, features=oracle)["mean"] > 0.05


def test_wilson_interval_matches_published_values():
    """Wilson 95% intervals (z = 1.96) as tabulated by Newcombe (1998): 0/10, 5/10, 81/263."""
    assert metrics.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert metrics.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert metrics.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
