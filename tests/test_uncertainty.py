"""Label uncertainty: the mixture predictive's decomposition, calibration metrics, kNN votes."""

from __future__ import annotations

import numpy as np
import pytest

from scmixvae.knn import knn_label_probabilities
from scmixvae.uncertainty import (
    brier_score,
    classification_metrics,
    detection_auroc,
    expected_calibration_error,
    predictive_uncertainty,
    reliability_table,
    selective_accuracy,
    true_label_nll,
    unknown_threshold,
)


def test_disagreement_is_zero_for_agreeing_components_and_log_s_for_disjoint_ones():
    agree = np.tile(np.array([[[0.7, 0.2, 0.1]]]), (4, 5, 1))
    frame = predictive_uncertainty(agree)
    np.testing.assert_allclose(frame["disagreement"], 0.0, atol=1e-12)
    expected = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(frame["entropy"], expected)
    np.testing.assert_allclose(frame["confidence"], 0.7)
    disjoint = np.eye(3)[:, None, :]  # three components, each certain of another label
    frame = predictive_uncertainty(disjoint)
    np.testing.assert_allclose(frame["disagreement"], np.log(3))
    np.testing.assert_allclose(frame["expected_entropy"], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(S, n_obs, n_labels\)"):
        predictive_uncertainty(agree[0])


def test_calibration_metrics_match_hand_computations():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    # confidences 0.9, 0.8, 0.7, 0.6 fall in four bins of 15; correct: yes, no, yes, yes
    ece = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(ece)
    brier = (0.01 + 0.01 + 0.64 + 0.64 + 0.09 + 0.09 + 0.16 + 0.16) / 4
    assert brier_score(probs, labels) == pytest.approx(brier)
    nll = -np.mean(np.log([0.9, 0.2, 0.7, 0.6]))
    assert true_label_nll(probs, labels) == pytest.approx(nll)
    table = reliability_table(probs, labels)
    assert table["n"].sum() == 4 and len(table) == 15
    metrics = classification_metrics(probs, labels, 1 - probs.max(1), coverage=0.5)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["accuracy_at_50"] == pytest.approx(0.5)  # the two most confident: 1 right
    assert metrics["error_auroc"] == pytest.approx(1 / 3)  # the one error is the 2nd most sure
    with pytest.raises(ValueError, match="integer codes"):
        brier_score(probs, np.array([0, 1, 2, 0]))


def test_detection_and_selection_order_by_uncertainty():
    u = np.array([0.1, 0.2, 0.3, 0.9])
    assert detection_auroc(u, np.array([False, False, False, True])) == 1.0
    assert np.isnan(detection_auroc(u, np.zeros(4, bool)))
    correct = np.array([True, True, False, False])
    assert selective_accuracy(u, correct, 0.5) == 1.0
    assert selective_accuracy(u, correct, 1.0) == 0.5


def test_unknown_threshold_keeps_the_error_rate_on_calibration_cells():
    rng = np.random.default_rng(0)
    u = rng.random(2000)
    correct = rng.random(2000) > u * 0.4  # errors grow with the uncertainty
    threshold = unknown_threshold(u, correct, 0.05)
    kept = u <= threshold
    assert (~correct[kept]).mean() <= 0.05
    # the largest such threshold: one more cell would break the rate
    order = np.argsort(u)
    n_kept = kept.sum()
    assert (~correct[order[: n_kept + 1]]).mean() > 0.05 or n_kept == len(u)
    assert unknown_threshold(u, np.zeros(2000, bool), 0.05) < u.min()  # all wrong: all unknown
    assert unknown_threshold(u, np.ones(2000, bool), 0.05) == u.max()
    with pytest.raises(ValueError, match="error_rate"):
        unknown_threshold(u, correct, 1.5)


def test_knn_vote_weights_near_neighbours_and_names_bad_shapes():
    reference = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    labels = np.array([0, 0, 0, 1, 1])
    probs = knn_label_probabilities(reference, labels, np.array([[0.05], [10.05]]), 2, k=5)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9
    self_vote = knn_label_probabilities(reference, labels, reference, 2, k=2, exclude_self=True)
    np.testing.assert_array_equal(self_vote.argmax(1), labels)
    with pytest.raises(ValueError, match="differ in width"):
        knn_label_probabilities(reference, labels, np.zeros((1, 2)), 2)
