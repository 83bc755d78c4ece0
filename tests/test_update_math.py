"""The arithmetic of one training update, against hand computations: the loss (label smoothing, normalised by
target tokens) and global-norm gradient clipping.

`update` leaves the gradients it stepped with on the parameters (the optimizer does not touch them), so each
test reads them there and compares them with autograd's gradients of a loss written out here, or with the
gradients of an identical model updated with clipping off. The model has no dropout, so copies of it compute
exactly the same function.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import ModelConfig, TrainConfig
from seq2seq.data import Batch, Example, collate
from seq2seq.model import Seq2Seq
from seq2seq.optim import build_optimizer
from seq2seq.tokenizer import EOS_ID
from seq2seq.training import update

VOCAB = 20
# Targets of 5, 1 and 2 pieces: 6 + 2 + 3 = 11 target tokens (each with its EOS) in 3 sentences, so a loss
# divided by sentences instead of tokens is 11/3 times too large.
EXAMPLES = [Example([5, 6, 7, 8, EOS_ID], [9, 10, 11, 12, 13]), Example([14, 15, EOS_ID], [16]),
            Example([4, 17, EOS_ID], [18, 19])]
TARGET_TOKENS = 11


def tiny_model() -> Seq2Seq:
    """No dropout, in training mode; weights in [-1, 1] so that the output distributions are far from uniform
    (near-uniform ones make label smoothing change the loss by less than rounding)."""
    torch.manual_seed(0)
    model = Seq2Seq(VOCAB, VOCAB, ModelConfig(emb_dim=8, hidden_dim=16, embedding_dropout=0.0, layer_dropout=0.0,
                                              output_dropout=0.0))
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-1.0, 1.0)
    return model.train()


def batch() -> Batch:
    return collate(EXAMPLES)


def updated(model: Seq2Seq, **settings: float) -> tuple[float, float, list[torch.Tensor]]:
    """`update` on a copy of `model`: (returned loss, returned gradient norm, the gradients it left)."""
    model = copy.deepcopy(model)
    config = TrainConfig(**settings)
    loss, grad_norm, finite = update(model, build_optimizer(model.parameters(), config), batch(), config)
    assert finite
    return loss, grad_norm, [param.grad.clone() for param in model.parameters()]


def hand_loss(model: Seq2Seq, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy per target token, as torch defines it: the target distribution puts
    1 - eps on the true token and eps/V on every token (the true one included), so a token costs
    (1 - eps) * -log p(y) + eps * mean over the vocabulary of -log p(v). Summed over the real target
    tokens (EOS included, padding not) and divided by their number."""
    whole = batch()
    logits = model(whole.src, whole.src_lens, whole.tgt_in)  # (batch, tgt_len, vocab), padding included
    log_probs = F.log_softmax(logits.double(), dim=-1)
    total = torch.zeros((), dtype=torch.float64)
    for row, example in enumerate(EXAMPLES):
        for position, token in enumerate([*example.tgt, EOS_ID]):
            token_log_probs = log_probs[row, position]
            total += (1 - label_smoothing) * -token_log_probs[token] + label_smoothing * -token_log_probs.mean()
    return total / TARGET_TOKENS


def global_norm(gradients: list[torch.Tensor]) -> float:
    return float(torch.stack([gradient.double().pow(2).sum() for gradient in gradients]).sum().sqrt())


def test_the_batch_has_the_target_tokens_the_hand_computations_divide_by() -> None:
    assert batch().tgt_tokens == TARGET_TOKENS == sum(len(example.tgt) + 1 for example in EXAMPLES)


def test_the_loss_is_label_smoothed_cross_entropy_per_target_token() -> None:
    model = tiny_model()
    with torch.no_grad():
        plain, smoothed = float(hand_loss(model, 0.0)), float(hand_loss(model, 0.1))
    assert abs(smoothed - plain) > 1e-3 * plain, "smoothing must change the loss by far more than the tolerance"

    assert updated(model, label_smoothing=0.0, clip_norm=0.0)[0] == pytest.approx(plain, rel=1e-5)
    assert updated(model, label_smoothing=0.1, clip_norm=0.0)[0] == pytest.approx(smoothed, rel=1e-5)


def test_the_gradients_are_those_of_the_loss_per_target_token() -> None:
    """The returned loss is computed apart from the one that is backpropagated: a loss divided by sentences
    (or summed) would return the same number and step with gradients 11/3 (or 11) times too large."""
    model = tiny_model()
    reference = copy.deepcopy(model)
    hand_loss(reference, 0.1).backward()

    _, grad_norm, gradients = updated(model, label_smoothing=0.1, clip_norm=0.0)

    expected = [param.grad for param in reference.parameters()]
    for gradient, wanted in zip(gradients, expected, strict=True):
        torch.testing.assert_close(gradient, wanted, rtol=1e-4, atol=1e-6)
    assert grad_norm == pytest.approx(global_norm(expected), rel=1e-5)


def test_clipping_scales_every_gradient_by_the_same_factor_to_the_threshold() -> None:
    """g <- g * c / ||g|| when the global L2 norm ||g|| over all parameters exceeds c: the direction is kept.
    Clipping each parameter on its own would change the direction and leave a global norm above c."""
    model = tiny_model()
    _, unclipped_norm, unclipped = updated(model, clip_norm=0.0)
    threshold = 0.25
    assert unclipped_norm > 4 * threshold, "the threshold must be well below the norm to clip"

    _, grad_norm, clipped = updated(model, clip_norm=threshold)

    assert global_norm(clipped) == pytest.approx(threshold, rel=1e-5)
    factor = threshold / unclipped_norm
    for gradient, before in zip(clipped, unclipped, strict=True):
        torch.testing.assert_close(gradient, before * factor, rtol=1e-5, atol=1e-9)
    assert grad_norm == unclipped_norm == pytest.approx(global_norm(unclipped), rel=1e-6), "the norm before clipping"


def test_gradients_under_the_threshold_are_left_as_they_are() -> None:
    model = tiny_model()
    _, unclipped_norm, unclipped = updated(model, clip_norm=0.0)

    _, grad_norm, gradients = updated(model, clip_norm=2 * unclipped_norm)

    assert grad_norm == unclipped_norm
    assert all(torch.equal(gradient, before) for gradient, before in zip(gradients, unclipped, strict=True))
