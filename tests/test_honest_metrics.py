"""Metrics a collapsed sample cannot win (issue 15 item 10): kde_nll (held-out data under a KDE of
the samples, bandwidth chosen on a split) and mode_coverage, against closed forms and against the
case that showed NLL ranking a collapse best (spiral MLP, dpmpp_2m_sde, 2 steps)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from core.errors import ScheduleLabError
from core.metrics.toy import component_counts, kde_bandwidth, kde_nll, mode_coverage, nll
from core.models import MixtureDenoiser, load_toy_model, toy_checkpoint
from core.optimizers.ays import AYSOptimizer
from core.optimizers.heldout import HeldoutMetric
from core.sampling import generate
from core.schedules import make_schedule
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _draw(mix, n, seed):
    return mix.sample(n, torch.Generator().manual_seed(seed)).double()


def test_kde_nll_is_the_closed_form_kernel_sum():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.1, -0.2], [3.0, 3.0]], dtype=torch.float64)
    h = 0.7
    d2 = ((y.numpy()[:, None, :] - x.numpy()[None]) ** 2).sum(-1)
    want = -np.mean(logsumexp(-d2 / (2 * h * h), axis=1) - math.log(3) - math.log(2 * math.pi * h * h))
    assert kde_nll(x, y, bandwidth=h) == pytest.approx(want, rel=1e-12)


def test_kde_nll_of_faithful_gaussian_samples_is_the_data_entropy():
    mix = get_toy("gaussian")                                      # N(0, 0.5^2 I) in 2D
    entropy = math.log(2 * math.pi * math.e * 0.25)                # d/2 log(2 pi e s^2), d = 2
    assert kde_nll(_draw(mix, 4000, 0), _draw(mix, 4000, 1)) == pytest.approx(entropy, abs=0.05)


def test_bandwidth_on_a_split_follows_the_modes_not_scotts_rule():
    mix = get_toy("grid8x8")                                       # 64 modes of std 0.02, total std 0.5
    h = kde_bandwidth(_draw(mix, 4000, 0), _draw(mix, 4000, 1))
    scott = 2000 ** (-1 / 6) * 0.5
    assert 0.005 < h < 0.05 < scott


def test_mode_coverage_counts_components_with_half_their_share():
    mix = get_toy("ring8")                                         # 8 equal weights 1/8
    counts = [10, 10, 10, 10, 10, 10, 3, 0]                        # 3 / 63 < 0.5 / 8 <= 10 / 63
    x = torch.cat([mix.means[k].expand(c, -1) for k, c in enumerate(counts)]).double()
    assert component_counts(x, mix).tolist() == counts
    assert mode_coverage(x, mix) == pytest.approx(6 / 8)
    assert mode_coverage(x, mix, threshold=1.0) == pytest.approx(6 / 8)    # 10 / 63 > 1 / 8 too
    with pytest.raises(ScheduleLabError, match="threshold"):
        mode_coverage(x, mix, threshold=0.0)


def test_constructed_collapse_wins_nll_but_loses_kde_nll_and_coverage():
    mix = get_toy("spiral")
    faithful, heldout = _draw(mix, 3000, 0), _draw(mix, 3000, 1)
    k = int(mix.weights.argmax())                                  # every sample on one mode, 0.3 x its spread
    z = torch.randn(3000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    collapsed = mix.means[k].double() + 0.3 * z @ torch.linalg.cholesky(mix.covariances[k].double()).T
    assert nll(collapsed, mix) < nll(faithful, mix)                # NLL prefers the collapse ...
    assert kde_nll(collapsed, heldout) > kde_nll(faithful, heldout) + 10      # ... these do not
    assert mode_coverage(collapsed, mix) == pytest.approx(1 / mix.n_components)
    assert mode_coverage(faithful, mix) == 1.0


@pytest.mark.skipif(not toy_checkpoint("spiral").is_file(), reason="needs the shipped spiral MLP")
def test_spiral_two_step_collapse_the_issue_reported():
    """Spiral MLP, dpmpp_2m_sde, karras: at 2 steps the samples form one blob with a BETTER NLL than
    at 10 steps (issue 15: -0.21 against 12.26); kde_nll and coverage rank 10 steps first."""
    mix, model = get_toy("spiral"), load_toy_model("spiral", "mlp")
    heldout = _draw(mix, 2000, 1)
    res = {}
    for steps in (2, 10):
        with torch.no_grad():
            x = generate(model, make_schedule("karras", steps, model.sigma_min, model.sigma_max), 2000,
                         solver="dpmpp_2m_sde", seed=0).x.double()
        res[steps] = (nll(x, mix), kde_nll(x, heldout), mode_coverage(x, mix))
    assert res[2][0] < res[10][0]                                  # NLL: the collapse wins
    assert res[2][1] > res[10][1] + 10                             # kde_nll: it loses by far
    assert res[2][2] < 0.2 < 0.8 < res[10][2]                      # coverage: 2 of 24 modes against most


def test_ays_early_stops_on_kde_nll_for_toys_by_default():
    ring = get_toy("ring8")
    model = MixtureDenoiser(ring)
    opt = AYSOptimizer(model, ring.sample, steps=4, n_samples=64, max_iters=1, heldout_n=256)
    assert opt.heldout == "kde_nll"
    m = HeldoutMetric("kde_nll", model, n=2048, mixture=ring)      # the data sampler falls back to the mixture's
    assert m(make_schedule("karras", 20)) < m(make_schedule("karras", 3)) - 1.0
    with pytest.raises(ScheduleLabError, match="data sampler"):
        HeldoutMetric("kde_nll", model)
