"""The DDIM log-prob step and gradient-window policies, against hand-computed values and diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from diffalign.sampling import (GradientWindow, ddim_step, ddim_step_with_logprob, gradient_window,
                                previous_alphas)

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def scheduler(steps=10, **changes):
    result = DDIMScheduler(**{**SD_SCHEDULE, **changes})
    result.set_timesteps(steps)
    return result


def test_log_prob_is_the_gaussian_density_computed_independently():
    sched = scheduler(10)
    t, t_prev = int(sched.timesteps[3]), int(sched.timesteps[4])
    generator = torch.Generator().manual_seed(0)
    x_t, eps, x_prev = (torch.randn(2, 4, 3, 3, generator=generator) for _ in range(3))
    a_t, a_prev = sched.alphas_cumprod[t].double(), sched.alphas_cumprod[t_prev].double()
    x0 = (x_t.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    eta = 0.7
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).sqrt() * eps.double()
    density = torch.distributions.Normal(mean, std).log_prob(x_prev.double())
    out = ddim_step_with_logprob(sched, eps, t, x_t, eta, prev_sample=x_prev, reduction="mean")
    torch.testing.assert_close(out.log_prob.double(), density.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-4)
    summed = ddim_step_with_logprob(sched, eps, t, x_t, eta, prev_sample=x_prev, reduction="sum")
    torch.testing.assert_close(summed.log_prob.double(), density.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-3)
    assert out.log_prob.dtype == torch.float32 and out.prev_sample is x_prev


def test_previous_timestep_comes_from_the_schedulers_own_list():
    trailing = scheduler(7, timestep_spacing="trailing", steps_offset=0)
    steps = trailing.timesteps.tolist()
    assert steps[:2] == [999, 856]  # diffusers' own t - 1000 // 7 would give 857 here
    alpha_t, alpha_prev = previous_alphas(trailing, torch.tensor([999, steps[-1]]))
    assert alpha_t[0] == trailing.alphas_cumprod[999]
    assert alpha_prev[0] == trailing.alphas_cumprod[856]
    assert alpha_prev[1] == trailing.final_alpha_cumprod  # after the last step
    with pytest.raises(ValueError, match=r"timesteps \[500\] are not in the scheduler's list"):
        previous_alphas(trailing, torch.tensor([500]))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_equals_the_diffusers_ddim_scheduler(eta):
    sched = scheduler(10)
    generator = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    t = sched.timesteps[2]
    expected = sched.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(7)).prev_sample
    if eta == 0:
        actual, _ = ddim_step(sched, eps, t, x_t, eta=0.0)
    else:
        actual = ddim_step_with_logprob(sched, eps, t, x_t, eta, generator=torch.Generator().manual_seed(7)).prev_sample
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_v_prediction_and_per_sample_timesteps():
    sched = scheduler(10, prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(2)
    x_t, v = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    timesteps = sched.timesteps[[1, 5]]
    joint, _ = ddim_step(sched, v, timesteps, x_t)
    for row in range(2):
        expected = sched.step(v[row:row + 1], timesteps[row], x_t[row:row + 1], eta=0.0).prev_sample
        torch.testing.assert_close(joint[row:row + 1], expected, rtol=1e-5, atol=1e-5)


def test_first_step_of_a_zero_terminal_snr_schedule():
    sched = scheduler(4, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                      steps_offset=0)
    t = int(sched.timesteps[0])
    assert t == 999 and sched.alphas_cumprod[t] == 0  # x_999 is pure noise
    generator = torch.Generator().manual_seed(3)
    x_t, clean = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    out = ddim_step_with_logprob(sched, -clean, t, x_t, eta=1.0, generator=generator)  # v = -x0 where alpha_bar = 0
    torch.testing.assert_close(out.pred_original_sample, clean)
    a_prev = sched.alphas_cumprod[int(sched.timesteps[1])]
    torch.testing.assert_close(out.std.flatten(), (1 - a_prev).sqrt().expand(2))  # (1-a_prev)/(1-0) * (1 - 0/a_prev)
    assert torch.isfinite(out.log_prob).all()
    expected = sched.step(-clean, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(ddim_step(sched, -clean, t, x_t)[0], expected, rtol=1e-5, atol=1e-5)


def test_bad_steps_are_clear_errors():
    sched = scheduler(10)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(sched, x, sched.timesteps[0], x, eta=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ddim_step_with_logprob(sched, x, sched.timesteps[0], x, reduction="max")
    one = scheduler(10, set_alpha_to_one=True)
    with pytest.raises(ValueError, match="zero variance"):
        ddim_step_with_logprob(one, x, one.timesteps[-1], x)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step(DDIMScheduler(**SD_SCHEDULE), x, 999, x)


def test_gradient_windows_of_each_method():
    assert gradient_window("draft", 4, 2).mask.all()
    last_two = gradient_window("draft-k", 4, 2, k=2)
    assert last_two.mask.tolist() == [[False, False, True, True]] * 2 and last_two.stop_step == 3
    assert gradient_window("draft-lv", 4, 1).mask.tolist() == [[False, False, False, True]]
    windows = gradient_window("alignprop", 6, 200, k=3, generator=torch.Generator().manual_seed(0))
    lengths = windows.mask.sum(dim=1)
    assert set(lengths.tolist()) == {1, 2, 3} and windows.mask[:, -1].all()
    assert all(row[row.nonzero()[0, 0]:].all() for row in windows.mask)  # suffixes
    refl = gradient_window("refl", 40, 3, refl_range=(30, 39), generator=torch.Generator().manual_seed(0))
    assert 30 <= refl.stop_step <= 39
    assert refl.mask.sum(dim=1).tolist() == [1, 1, 1] and refl.mask[:, refl.stop_step].all()
    with pytest.raises(ValueError, match="needs 1 <= k <= num_steps"):
        gradient_window("draft-k", 4, 1, k=5)
    with pytest.raises(ValueError, match="method must be one of"):
        gradient_window("ddpo", 4, 1)
    with pytest.raises(ValueError, match="refl_range"):
        gradient_window("refl", 10, 1, refl_range=(5, 10))
    assert isinstance(windows, GradientWindow) and math.isclose(lengths.float().mean().item(), 2.0, abs_tol=0.3)
