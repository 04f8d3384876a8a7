"""The digit judge: its held-out accuracy, what it scores, and the inputs it rejects."""

import pytest
import torch

from minifm.datasets import load_digits
from minifm.judge import DigitJudge, JudgeRecipe, augment, train_judge


@pytest.fixture(scope="module")
def trained():
    return train_judge()


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


def test_judge_reaches_098_held_out_accuracy(trained, digits):
    judge, accuracy = trained
    recomputed = (judge.classify(digits.test_images) == digits.test_labels).float().mean().item()
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(recomputed, abs=1e-9)


def test_judge_scores_wrong_labels_low(trained, digits):
    judge, _ = trained
    wrong = (digits.test_labels + 1) % 10
    assert judge.agreement(digits.test_images, wrong) < 0.05


def test_judge_tolerates_one_pixel_shifts(trained, digits):
    judge, _ = trained
    shifted = torch.roll(digits.test_images, shifts=(1, -1), dims=(-2, -1))
    assert judge.agreement(shifted, digits.test_labels) >= 0.9


def test_classify_restores_training_mode(trained, digits):
    judge, _ = trained
    judge.train()
    judge.classify(digits.test_images[:4])
    assert judge.training
    judge.eval()


def test_augment_without_ranges_is_identity(digits):
    images = digits.test_images[:8]
    still = JudgeRecipe(max_rotation=0.0, max_scale=0.0, max_shift=0.0)
    torch.testing.assert_close(augment(images, still), images, atol=1e-6, rtol=0)


def test_augment_changes_images_and_keeps_shape(digits):
    torch.manual_seed(0)
    images = digits.test_images[:8]
    moved = augment(images, JudgeRecipe())
    assert moved.shape == images.shape
    assert (moved - images).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_judge_rejects_wrong_image_shape():
    judge = DigitJudge()
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 1, 16, 16\)"):
        judge(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="image_size must be a multiple of 4"):
        DigitJudge(image_size=10)


def test_agreement_rejects_mismatched_lengths():
    judge = DigitJudge()
    with pytest.raises(ValueError, match="equal length; got 2 and 3"):
        judge.agreement(torch.zeros(2, 1, 16, 16), torch.zeros(3, dtype=torch.long))
