"""Loss formulas against hand-computed values."""

import math

import pytest
import torch

from diffalign.losses import (d3po_loss, diffusion_dpo_loss, direct_reward_loss, pareto_preference, per_sample_mse,
                              prediction_target, sft_loss)


def test_per_sample_mse_is_mean_over_non_batch_elements():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    assert per_sample_mse(prediction, target).tolist() == [1.0, 1.0]


def test_per_sample_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        per_sample_mse(torch.zeros(2, 3), torch.zeros(2, 4))


def test_dpo_loss_hand_computed():
    # pair 0: model prefers the winner more than the reference: (0.1-0.3) - (0.2-0.2) = -0.2
    # pair 1: the opposite: (0.4-0.1) - (0.2-0.2) = 0.3
    out = diffusion_dpo_loss(torch.tensor([0.1, 0.4]), torch.tensor([0.3, 0.1]),
                             torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2]), beta=10.0)
    logits = [-0.5 * 10.0 * -0.2, -0.5 * 10.0 * 0.3]  # [1.0, -1.5]
    expected = sum(math.log1p(math.exp(-x)) for x in logits) / 2
    assert out.logits.tolist() == pytest.approx(logits)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.implicit_accuracy.item() == 0.5
    assert out.model_diff.tolist() == pytest.approx([-0.2, 0.3])


def test_dpo_loss_is_log2_when_policy_equals_reference():
    errors = torch.rand(5)
    out = diffusion_dpo_loss(errors, errors.flip(0), errors, errors.flip(0), beta=5000.0)
    assert out.loss.item() == pytest.approx(math.log(2.0))
    assert torch.equal(out.logits, torch.zeros(5))
    assert out.implicit_accuracy.item() == 0.0


def test_dpo_loss_is_mean_of_per_pair_logsigmoid_not_logsigmoid_of_mean():
    w, l = torch.tensor([0.0, 0.0]), torch.tensor([1.0, -3.0])
    zero = torch.zeros(2)
    out = diffusion_dpo_loss(w, l, zero, zero, beta=2.0)
    per_pair = [math.log1p(math.exp(-(-0.5 * 2.0 * (0.0 - x)))) for x in (1.0, -3.0)]
    assert out.loss.item() == pytest.approx(sum(per_pair) / 2, rel=1e-6)
    mean_first = math.log1p(math.exp(-(-0.5 * 2.0 * (0.0 - (-1.0)))))
    assert out.loss.item() != pytest.approx(mean_first, rel=1e-3)


def test_dpo_gradient_lowers_winner_error_and_raises_loser_error():
    err_w = torch.tensor([0.5], requires_grad=True)
    err_l = torch.tensor([0.5], requires_grad=True)
    diffusion_dpo_loss(err_w, err_l, torch.tensor([0.5]), torch.tensor([0.5]), beta=1.0).loss.backward()
    assert err_w.grad.item() > 0  # descending the loss lowers the winner's error
    assert err_l.grad.item() < 0  # and raises the loser's


def test_reference_errors_carry_no_gradient():
    ref_w = torch.tensor([0.3], requires_grad=True)
    out = diffusion_dpo_loss(torch.tensor([0.1], requires_grad=True), torch.tensor([0.2]), ref_w,
                             torch.tensor([0.2]), beta=3.0)
    out.loss.backward()
    assert ref_w.grad is None


def test_sft_loss_is_mean_winner_error():
    assert sft_loss(torch.tensor([1.0, 3.0])).item() == 2.0


def test_prediction_target_epsilon_and_v():
    noise, latents = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    alphas = torch.tensor([0.25, 0.64])
    assert torch.equal(prediction_target("epsilon", noise, latents, torch.tensor([1]), alphas), noise)
    v = prediction_target("v_prediction", noise, latents, torch.tensor([1]), alphas)
    assert v.item() == pytest.approx(0.8 * 1.0 - 0.6 * 2.0)
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_target("sample", noise, latents, torch.tensor([0]), alphas)


def test_dpo_positive_penalises_only_a_winner_error_above_the_reference():
    # pair 0: winner error rose by 0.1 over the reference -> penalty 0.5*beta*lambda*0.1 inside the logit
    # pair 1: winner error fell -> no penalty, the logit is plain DPO's
    err_w, err_l = torch.tensor([0.3, 0.1]), torch.tensor([0.6, 0.2])
    ref_w, ref_l = torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2])
    plain = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=10.0)
    positive = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=10.0, positive_lambda=2.0)
    assert plain.logits.tolist() == pytest.approx([-0.5 * 10 * (-0.3), -0.5 * 10 * (-0.1)])  # [1.5, 0.5]
    assert positive.logits.tolist() == pytest.approx([1.5 - 0.5 * 10 * 2.0 * 0.1, 0.5])  # [0.5, 0.5]
    expected = 2 * math.log1p(math.exp(-0.5)) / 2
    assert positive.loss.item() == pytest.approx(expected, rel=1e-6)


def test_dpo_positive_gradient_pulls_a_degraded_winner_back():
    # both errors grew, the loser's more: plain DPO rewards that; DPO-Positive pushes err_w down harder
    def winner_grad(positive_lambda):
        err_w = torch.tensor([0.3], requires_grad=True)
        diffusion_dpo_loss(err_w, torch.tensor([0.5]), torch.tensor([0.2]), torch.tensor([0.2]), beta=10.0,
                           positive_lambda=positive_lambda).loss.backward()
        return err_w.grad.item()

    assert winner_grad(5.0) > winner_grad(0.0) > 0


def test_d3po_loss_hand_computed_with_the_trust_region():
    logp_w = torch.tensor([0.05, 0.5], requires_grad=True)
    logp_l = torch.tensor([-0.02, 0.0], requires_grad=True)
    zeros = torch.zeros(2)
    out = d3po_loss(logp_w, logp_l, zeros, zeros, beta=2.0, clip=0.1)
    # pair 0 inside the region: logit 2 * (0.05 + 0.02); pair 1: r_w = e^0.5 clamped to 1.1, r_l = 1
    expected = (math.log1p(math.exp(-2 * 0.07)) + math.log1p(math.exp(-2 * math.log(1.1)))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.clamped_fraction.item() == 0.5
    out.loss.backward()
    assert logp_w.grad[1] == 0 and logp_w.grad[0] != 0  # the clamped ratio carries no gradient
    assert logp_l.grad[0] == pytest.approx(-logp_w.grad[0].item())
    with pytest.raises(ValueError, match="clip must be in"):
        d3po_loss(zeros, zeros, zeros, zeros, clip=1.5)


def test_pareto_preference_masks_ties_and_incomparable_pairs():
    a = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 3.0], [1.0, 2.0]])
    b = torch.tensor([[0.5, 2.0], [1.0, 2.0], [1.5, 2.5], [1.0, 2.0], [1.05, 1.0]])
    assert pareto_preference(a, b).tolist() == [1, 0, -1, 0, 0]
    assert pareto_preference(a, b, margin=0.1).tolist() == [1, 0, -1, 0, 1]  # 1.0 vs 1.05 is a tie at margin 0.1
    assert pareto_preference(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])).tolist() == [1, 0]


def test_direct_reward_loss():
    rewards, kl = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])
    assert direct_reward_loss(rewards).item() == -2.0
    assert direct_reward_loss(rewards, kl, kl_weight=0.1).item() == pytest.approx(-2.0 + 0.1)
    with pytest.raises(ValueError, match="needs the kl term"):
        direct_reward_loss(rewards, None, kl_weight=1.0)
