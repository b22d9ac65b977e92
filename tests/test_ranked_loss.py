"""The ranked preference loss (RankDPO / LiPO-λ weights) against hand-computed values."""

import math

import pytest
import torch

from diffalign.losses import diffusion_dpo_loss, ranked_dpo_loss, ranked_pair_weights, ranks


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


ALL4 = torch.ones(1, 4, dtype=torch.bool)


def test_ranks_best_first_with_average_for_ties_and_zero_for_padding():
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    scores = torch.tensor([[1.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.5, 9.0]])
    assert ranks(scores, mask).tolist() == [[1.0, 2.5, 2.5, 4.0], [3.0, 1.0, 2.0, 0.0]]
    broken = ranks(torch.zeros(1, 4), ALL4, tie_break=torch.tensor([[0.1, 0.9, 0.5, 0.1]]))
    assert broken.tolist() == [[3.5, 1.0, 2.0, 3.5]]


def test_gain_weights_k4_with_a_tie_hand_computed():
    # G = 2^psi = (2, sqrt2, sqrt2, 1); ordered pairs (0,1) (0,2) (0,3) (1,3) (2,3); (1,2) is a tie
    weights = ranked_pair_weights(torch.tensor([[1.0, 0.5, 0.5, 0.0]]), ALL4, "gain")[0]
    raw = {(0, 1): 2 - 2 ** 0.5, (0, 2): 2 - 2 ** 0.5, (0, 3): 1.0, (1, 3): 2 ** 0.5 - 1, (2, 3): 2 ** 0.5 - 1}
    scale = 5 / sum(raw.values())  # mean 1 over the prompt's 5 labelled pairs (raw sum is exactly 3)
    for i in range(4):
        for j in range(4):
            assert weights[i, j].item() == pytest.approx(raw.get((i, j), 0.0) * scale, abs=1e-6)
    assert weights[0, 3].item() == pytest.approx(5 / 3, rel=1e-6)


def test_dcg_weights_k4_with_a_tie_hand_computed():
    # positions by labels (1, 2.5, 2.5, 4); discount 1/log2(1+pi)
    weights = ranked_pair_weights(torch.tensor([[1.0, 0.5, 0.5, 0.0]]), ALL4, "dcg")[0]
    d = [1 / math.log2(1 + p) for p in (1.0, 2.5, 2.5, 4.0)]
    g = [2.0, 2 ** 0.5, 2 ** 0.5, 1.0]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    raw = {(i, j): abs(g[i] - g[j]) * abs(d[i] - d[j]) for i, j in pairs}
    scale = len(pairs) / sum(raw.values())
    for (i, j), value in raw.items():
        assert weights[i, j].item() == pytest.approx(value * scale, rel=1e-5)
    assert weights[0, 3].item() == pytest.approx(2.3836, abs=1e-3)
    assert weights[1, 2].item() == weights[2, 1].item() == 0.0


def test_uniform_loss_k3_hand_computed():
    # psi = (0.5, 1, 0): pairs (1,0) (1,2) (0,2); s = err - ref = (0.1, -0.2, 0.3); beta 2 -> logit = -(s_i - s_j)
    ref = torch.tensor([[0.4, 0.5, 0.6]])
    out = ranked_dpo_loss(ref + torch.tensor([[0.1, -0.2, 0.3]]), ref, torch.tensor([[0.5, 1.0, 0.0]]),
                          torch.ones(1, 3, dtype=torch.bool), beta=2.0)
    expected = (softplus(-0.3) + softplus(-0.5) + softplus(-0.2)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.pairs == 3 and out.implicit_accuracy.item() == 1.0
    assert out.logits[0, 1, 0].item() == pytest.approx(0.3, rel=1e-5)


def test_gain_loss_k4_and_masked_k3_prompts_hand_computed():
    # prompt A: K=4, psi (1, .5, .5, 0); prompt B: 3 valid images, psi (0, 1, .5), the 4th is padding
    labels = torch.tensor([[1.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.5, 7.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    s = torch.tensor([[0.0, 0.1, -0.1, 0.2], [0.3, -0.3, 0.0, -5.0]])
    out = ranked_dpo_loss(s, torch.zeros_like(s), labels, mask, beta=4.0, weighting="gain")
    r2 = 2 ** 0.5

    def prompt_loss(raw: dict, row: int) -> float:
        scale = len(raw) / sum(raw.values())
        return sum(w * scale * softplus(2.0 * (s[row, i] - s[row, j]).item()) for (i, j), w in raw.items()) / len(raw)

    a = prompt_loss({(0, 1): 2 - r2, (0, 2): 2 - r2, (0, 3): 1.0, (1, 3): r2 - 1, (2, 3): r2 - 1}, 0)
    b = prompt_loss({(1, 0): 1.0, (1, 2): 2 - r2, (2, 0): r2 - 1}, 1)
    assert out.loss.item() == pytest.approx((a + b) / 2, rel=1e-5)
    assert out.pairs == 8
    assert out.pair_weights[1, :, 3].abs().sum() == 0 and out.pair_weights[1, 3].abs().sum() == 0


@pytest.mark.parametrize("weighting", ["uniform", "gain", "dcg"])
@pytest.mark.parametrize("rank_source", ["labels", "model"])
@pytest.mark.parametrize("positive_lambda", [0.0, 5.0])
def test_k2_with_binary_labels_is_diffusion_dpo(weighting, rank_source, positive_lambda):
    generator = torch.Generator().manual_seed(0)
    err_w, err_l, ref_w, ref_l = (torch.rand(6, generator=generator) * 1e-3 + 0.1 for _ in range(4))
    err_w.requires_grad_(True)
    err_l.requires_grad_(True)
    dpo = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=5000.0, positive_lambda=positive_lambda)
    dpo_grads = torch.autograd.grad(dpo.loss, (err_w, err_l))
    ranked = ranked_dpo_loss(torch.stack([err_w, err_l], 1), torch.stack([ref_w, ref_l], 1),
                             torch.tensor([[1.0, 0.0]]).repeat(6, 1), torch.ones(6, 2, dtype=torch.bool),
                             beta=5000.0, weighting=weighting, rank_source=rank_source,
                             positive_lambda=positive_lambda)
    ranked_grads = torch.autograd.grad(ranked.loss, (err_w, err_l))
    assert ranked.loss.item() == pytest.approx(dpo.loss.item(), rel=1e-6)
    for a, b in zip(ranked_grads, dpo_grads):
        torch.testing.assert_close(a, b)
    assert ranked.implicit_accuracy.item() == pytest.approx(dpo.implicit_accuracy.item())


def test_positive_penalty_k3_hand_computed():
    # s = (0.1, -0.2, 0.3), psi (0.5, 1, 0), beta 2, lambda 1: winners' logits lose relu(s_winner) = 0.1 for
    # the pair (0, 2) and nothing where image 1 (s < 0) wins
    ref = torch.tensor([[0.4, 0.5, 0.6]])
    out = ranked_dpo_loss(ref + torch.tensor([[0.1, -0.2, 0.3]]), ref, torch.tensor([[0.5, 1.0, 0.0]]),
                          torch.ones(1, 3, dtype=torch.bool), beta=2.0, positive_lambda=1.0)
    expected = (softplus(-0.3) + softplus(-0.5) + softplus(-0.2 + 0.1)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_tied_and_padded_images_get_no_gradient():
    # prompt 0: all three tied -> no pair, no gradient; prompt 1: image 3 is padding with a large label
    labels = torch.tensor([[0.5, 0.5, 0.5, 0.0], [1.0, 0.0, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    err = torch.rand(2, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for weighting in ("uniform", "gain", "dcg"):
        out = ranked_dpo_loss(err, torch.zeros(2, 4), labels, mask, beta=10.0, weighting=weighting)
        (grad,) = torch.autograd.grad(out.loss, err)
        assert grad[0].abs().sum().item() == 0.0
        assert grad[1, 3].item() == 0.0
        assert grad[1, :3].abs().min().item() > 0
        assert out.pairs == 3


def test_no_labelled_pair_gives_zero_loss_with_a_graph():
    err = torch.rand(1, 3, requires_grad=True)
    out = ranked_dpo_loss(err, torch.zeros(1, 3), torch.full((1, 3), 0.5), torch.ones(1, 3, dtype=torch.bool), 1.0)
    assert out.loss.item() == 0.0 and out.pairs == 0
    out.loss.backward()
    assert err.grad.abs().sum().item() == 0.0


def test_model_rank_source_starts_at_the_label_order_then_follows_the_model():
    labels = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    by_labels = ranked_pair_weights(labels, ALL4, "dcg")
    at_step_zero = ranked_dpo_loss(torch.zeros(1, 4), torch.zeros(1, 4), labels, ALL4, 1.0, "dcg", "model")
    torch.testing.assert_close(at_step_zero.pair_weights, by_labels)
    reversed_model = ranked_dpo_loss(torch.tensor([[0.4, 0.2, 0.1, -0.3]]), torch.zeros(1, 4), labels, ALL4, 1.0,
                                     "dcg", "model")
    # the model ranks image 3 first and image 0 last: LiPO-λ swaps their discounts
    model_positions = ranks(-torch.tensor([[0.4, 0.2, 0.1, -0.3]]), ALL4, tie_break=labels)
    assert model_positions.tolist() == [[4.0, 3.0, 2.0, 1.0]]
    assert not torch.allclose(reversed_model.pair_weights, by_labels)
    assert (reversed_model.pair_weights > 0).equal(by_labels > 0)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="must all be \\[B, K\\]"):
        ranked_dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match="pair weighting must be one of"):
        ranked_pair_weights(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "ndcg")
    with pytest.raises(ValueError, match="rank source must be one of"):
        ranked_dpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.0,
                        rank_source="policy")
