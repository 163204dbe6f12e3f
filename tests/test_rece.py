"""RECE: the derivation of the regenerating embedding against an independent float64 computation, rounds that
leave less to regenerate, and RECE with no round being UCE's erase exactly."""

import numpy as np
import pytest
import torch

from concept_edit import EditRequest, fit, make_config
from concept_edit.methods.rece.fit import regenerating_embeddings, residual


def test_the_regenerating_embedding_matches_an_independent_least_squares():
    """e* = argmin sum_l ||W_l M e - W_l c||^2 + lam ||e||^2, solved by numpy's lstsq on the stacked system."""
    rng = np.random.default_rng(0)
    d = 6
    ws = [rng.normal(size=(5, d)), rng.normal(size=(7, d)), rng.normal(size=(4, d))]
    operator = rng.normal(size=(d, d)) * 0.3
    concept = rng.normal(size=(2, d))
    lam = 0.7
    m = np.eye(d) + operator
    stacked = np.vstack([w @ m for w in ws] + [np.sqrt(lam) * np.eye(d)])
    expected = []
    for c in concept:
        rhs = np.concatenate([w @ c for w in ws] + [np.zeros(d)])
        expected.append(np.linalg.lstsq(stacked, rhs, rcond=None)[0])
    g = torch.tensor(sum(w.T @ w for w in ws))
    got = regenerating_embeddings(g, torch.tensor(operator), torch.tensor(concept), lam)
    np.testing.assert_allclose(got.numpy(), np.array(expected), rtol=1e-9, atol=1e-12)
    # the residual is 0 for the concept itself under no edit, and what the formula says otherwise
    assert residual(g, torch.zeros(d, d, dtype=g.dtype), torch.tensor(concept), torch.tensor(concept)) == 0.0


def test_rece_without_rounds_is_uce_erase(sd):
    request = EditRequest(concepts=("cat",), guide="art", preserve=("a dog",))
    uce = fit(sd, "uce", request)
    rece = fit(sd, "rece", request, make_config("rece", rounds=0))
    assert [e.target for e in uce.entries] == [e.target for e in rece.entries]
    for a, b in zip(uce.entries, rece.entries, strict=True):
        torch.testing.assert_close(a.materialize(), b.materialize(), rtol=0, atol=0)


def test_each_round_erases_what_regenerated_the_concept(sd):
    edit = fit(sd, "rece", EditRequest(concepts=("cat",), guide="art"), make_config("rece", rounds=3))
    stats = edit.manifest["stats"]
    rounds = stats["rounds"]
    assert len(rounds) == 3 and stats["edited_tokens"] == 4  # the concept's row and one derived per round
    for r in rounds:  # after its round, the derived embedding regenerates less of the concept than before
        assert r["residual_after"] > r["residual_before"]
    assert stats["residual_of_the_next_derived"] > rounds[0]["residual_before"]


BAD = [("rounds", -1, "rounds"), ("rounds", 10**6, "rounds"), ("derive_lam", 0, "derive_lam"),
       ("derive_lam", float("nan"), "derive_lam")]


@pytest.mark.parametrize(("option", "value", "message"), BAD)
def test_bad_rece_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        make_config("rece", **{option: value})
