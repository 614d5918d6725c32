"""The engine functions the app plots: core.viz_data (density grid, cumulative shares) and
core.compare (distance to a many-step ODE reference), checked against closed forms."""
import math

import numpy as np
import pytest
import torch

from core.compare import compare_to_reference, error_vs_nfe, per_sample_rmse, reference_solution
from core.errors import ScheduleLabError
from core.models.mixture import MixtureDenoiser
from core.schedules import make_schedule
from core.viz_data import cumulative_share, density_grid, schedule_table
from toy_data import gaussian, get_toy
from toy_data.mixture import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_density_grid_is_the_closed_form_gaussian_and_integrates_to_one(sigma):
    c = 0.5
    g = density_grid(gaussian(c), n=161, extent=(-4, 4), sigma=sigma)
    xx, yy = np.meshgrid(g["x"], g["y"])
    v = c ** 2 + sigma ** 2
    want = -(xx ** 2 + yy ** 2) / (2 * v) - math.log(2 * math.pi * v)
    np.testing.assert_allclose(g["log_density"], want, rtol=1e-12, atol=1e-12)
    h = g["x"][1] - g["x"][0]
    assert np.exp(g["log_density"]).sum() * h * h == pytest.approx(1.0, abs=1e-6)


def test_density_grid_rows_are_y_and_columns_are_x():
    m = GaussianMixture([1.0], [[0.8, -0.4]], [[[0.01, 0], [0, 0.01]]], name="offset")
    g = density_grid(m, n=101, extent=(-1, 1))
    row, col = np.unravel_index(np.argmax(g["log_density"]), g["log_density"].shape)
    assert g["x"][col] == pytest.approx(0.8, abs=0.02) and g["y"][row] == pytest.approx(-0.4, abs=0.02)


def test_default_extent_covers_every_mode():
    m = get_toy("grid8x8")
    g = density_grid(m, n=40)
    lo, hi = g["extent"]
    assert lo < float(m.means.min()) and hi > float(m.means.max())


@pytest.mark.parametrize("kwargs, msg", [({"n": 1}, "n >= 2"), ({"extent": (1, 0)}, "hi > lo"),
                                         ({"sigma": -1.0}, "sigma")])
def test_density_grid_bad_input(kwargs, msg):
    with pytest.raises(ScheduleLabError, match=msg):
        density_grid(gaussian(0.5), **kwargs)
    with pytest.raises(ScheduleLabError, match="2D"):
        density_grid(gaussian(0.5, dim=3))


def test_cumulative_share_orders_from_sigma_max_and_ends_at_one():
    lo, hi, share = [0.0, 1.0, 0.1], [0.1, 10.0, 1.0], [0.2, 0.5, 0.3]      # shuffled intervals
    c = cumulative_share(lo, hi, share)
    np.testing.assert_allclose(c["sigma"], [1.0, 0.1, 0.0])
    np.testing.assert_allclose(c["cumulative"], [0.5, 0.8, 1.0])
    with pytest.raises(ScheduleLabError):
        cumulative_share([0.0], [1.0, 2.0], [1.0])


def test_schedule_table_rows():
    s = make_schedule("karras", 4)
    (row,) = schedule_table({"k": s})
    assert row["steps"] == 4 and row["sigma_max"] == 80.0 and row["sigmas"].endswith(", 0")


# ---------------------------------------------------------------- core.compare
class _GaussImages(MixtureDenoiser):
    """The exact N(0, c^2 I) denoiser on [B, 1, 2, 2] 'images'."""

    def __init__(self, c):
        super().__init__(gaussian(c, dim=4))
        self.event_shape = (1, 2, 2)

    def denoise(self, x, sigma):
        return super().denoise(x.reshape(-1, 4), sigma).reshape(x.shape)


def test_reference_solution_is_the_closed_form_ode_solution():
    """For N(0, c^2 I) the probability-flow ODE is linear: x(0) = c / sqrt(c^2 + smax^2) x(smax)."""
    c, smax = 0.5, 20.0
    model = _GaussImages(c)
    z = torch.randn((16, 1, 2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = c / math.sqrt(c ** 2 + smax ** 2) * smax * z
    err = {}
    for steps in (50, 100):
        ref = reference_solution(model, 16, seed=3, sigma_max=smax, steps=steps)
        err[steps] = float(((ref - exact).abs() / exact.abs()).max())
    assert err[100] < 2e-3
    # Heun is second order: twice the steps, a quarter of the error
    assert 3.0 < err[50] / err[100] < 5.0


def test_compare_and_sweep_converge_to_the_reference():
    model = _GaussImages(0.5)
    fams = {"karras": lambda n: make_schedule("karras", n), "loglinear": lambda n: make_schedule("loglinear", n)}
    # in the asymptotic regime the error falls with the solver's order: x 1/2 per doubling for
    # Euler, about x 1/4 for DPM-Solver++(2M) (at small NFE it need not even be monotone)
    for solver, lo, hi in (("euler", 1.7, 2.3), ("dpmpp_2m", 3.0, 6.0)):
        res = error_vs_nfe(model, fams, [16, 32, 64], solver=solver, n=32, seed=0, ref_steps=200)
        for k in fams:
            r = res["rmse"][k]
            assert lo < r[0] / r[1] < hi and lo < r[1] / r[2] < hi, (solver, k, r)
    one = compare_to_reference(model, {"k": make_schedule("karras", 32)}, solver="dpmpp_2m", n=32, seed=0,
                               ref_steps=200)
    assert one["rmse"]["k"] == pytest.approx(res["rmse"]["karras"][1], rel=1e-12)
    np.testing.assert_allclose(per_sample_rmse(one["samples"]["k"], one["reference"][80.0]).mean().item(),
                               one["rmse"]["k"], rtol=1e-12)


def test_compare_refuses_stochastic_solvers_and_bad_nfe():
    model = _GaussImages(0.5)
    with pytest.raises(ScheduleLabError, match="stochastic"):
        compare_to_reference(model, {"k": make_schedule("karras", 4)}, solver="dpmpp_2m_sde")
    with pytest.raises(ScheduleLabError, match="positive"):
        error_vs_nfe(model, {"k": lambda n: make_schedule("karras", n)}, [0])


def test_objective_totals_rows_and_winners():
    from core.viz_data import objective_totals
    klub = {"a": {"total": 3.0, "total_se": 0.1}, "b": {"total": 1.0, "total_se": 0.2},
            "c": {"total": float("nan"), "total_se": float("nan")}}
    stein = {"a": {"total_cost": 2.0}, "b": {"total_cost": 5.0}, "c": {"total_cost": 2.0}}
    trunc = {"a": {"objective": 0.5}, "b": {"objective": 0.4}, "c": {"objective": 0.1}}
    out = objective_totals(klub, stein, trunc)
    assert [r["schedule"] for r in out["rows"]] == ["a", "b", "c"]
    assert out["rows"][0] == {"schedule": "a", "KLUB": 3.0, "KLUB s.e.": 0.1, "Stein": 2.0, "bound": 0.5}
    assert out["rows"][2]["KLUB"] is None                        # a NaN is never shown as a number ...
    assert out["best"] == {"KLUB": "b", "Stein": "a", "bound": "c"}   # ... nor wins; a tie goes to the first
    # an objective that failed (empty) has no column and no winner
    out = objective_totals(klub, {}, trunc)
    assert "Stein" not in out["rows"][0] and set(out["best"]) == {"KLUB", "bound"}


def test_metric_winners_lowest_or_highest_and_never_nan():
    from core.viz_data import metric_winners
    m = {"a": {"nll": 1.0, "coverage": 0.5, "mmd": float("nan")}, "b": {"nll": 2.0, "coverage": 0.9, "mmd": None}}
    assert metric_winners(m, ["nll", "coverage", "mmd"], higher_is_better={"coverage"}) == {"nll": "a",
                                                                                           "coverage": "b"}
