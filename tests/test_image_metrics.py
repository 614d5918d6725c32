"""Image metrics: FD against a reference sqrtm implementation, KID unbiasedness, the classifier,
confidence / class balance, reference error, seeds and CIs."""
import numpy as np
import pytest
import scipy.linalg
import torch

from core.errors import ScheduleLabError
from core.metrics import images as im


def _fd_reference(f1, f2):
    """The textbook FID formula with scipy's matrix square root."""
    a, b = f1.numpy(), f2.numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fd_matches_scipy_sqrtm_reference(gen):
    f1 = torch.randn(400, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    f2 = 0.5 + 1.3 * torch.randn(300, 6, generator=gen, dtype=torch.float64)
    assert im.frechet_distance(f1, f2) == pytest.approx(_fd_reference(f1, f2), rel=1e-6)


def test_fd_closed_form_for_gaussians():
    # exact moments: FD(N(0, I), N(m, c^2 I)) = |m|^2 + d (1 - c)^2; large samples approach it
    g = torch.Generator().manual_seed(1)
    d, c = 4, 2.0
    m = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    f1 = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    f2 = m + c * torch.randn(200_000, d, generator=g, dtype=torch.float64)
    assert im.frechet_distance(f1, f2) == pytest.approx(float(m.square().sum()) + d * (1 - c) ** 2, rel=0.02)


def test_fd_self_zero_and_grows_with_noise():
    from core.data.digits import load_digits_split
    x = load_digits_split().test_x[:300]
    _, f = im.classify(x)
    assert abs(im.frechet_distance(f, f)) < 1e-6      # vs ~0.1-10 for the noised sets
    fds = []
    g = torch.Generator().manual_seed(0)
    for s in (0.1, 0.3, 0.6):
        _, fn = im.classify(x + s * torch.randn(x.shape, generator=g))
        fds.append(im.frechet_distance(f, fn))
    assert 0 < fds[0] < fds[1] < fds[2]


def _kid_bruteforce(x, y):
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_equals_bruteforce_unbiased_mmd(gen):
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = 0.3 + torch.randn(12, 3, generator=gen, dtype=torch.float64)
    val, _ = im.kid(x, y, subsets=1, subset_size=12)
    assert val == pytest.approx(_kid_bruteforce(x, y), rel=1e-10)


def test_kid_is_unbiased_zero_for_same_distribution_and_positive_otherwise():
    # the mean over independent draws of two same-distribution samples is 0 within its CI
    g = torch.Generator().manual_seed(3)
    vals = [im.kid(torch.randn(60, 4, generator=g, dtype=torch.float64),
                   torch.randn(60, 4, generator=g, dtype=torch.float64), subsets=1)[0] for _ in range(200)]
    mean, se = np.mean(vals), np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(mean) < 3 * se
    shifted = [im.kid(torch.randn(60, 4, generator=g, dtype=torch.float64),
                      0.5 + torch.randn(60, 4, generator=g, dtype=torch.float64), subsets=1)[0] for _ in range(20)]
    assert np.mean(shifted) > 10 * se


def test_classifier_held_out_accuracy_and_real_confidence():
    from core.data.digits import load_digits_split
    d = load_digits_split()
    probs, feats = im.classify(d.test_x)
    acc = float((probs.argmax(1) == d.test_y).double().mean())
    assert acc >= 0.97
    assert im.confidence(probs) > 0.95
    assert feats.shape == (d.test_x.shape[0], 64)
    bal = im.class_balance(probs)
    assert sum(bal) == pytest.approx(1.0) and max(abs(b - 0.1) for b in bal) < 0.02
    # FD(real train, held-out) is well below FD(real train, degraded held-out): blur or noise
    _, ft = im.real_features("train")
    _, fnoisy = im.classify(d.test_x + 0.5 * torch.randn(d.test_x.shape, generator=torch.Generator().manual_seed(0)))
    _, fblur = im.classify(torch.nn.functional.avg_pool2d(d.test_x, 3, 1, 1))
    base = im.frechet_distance(ft, feats)
    assert base < 0.5 * im.frechet_distance(ft, fnoisy) and base < 0.2 * im.frechet_distance(ft, fblur)


def test_confidence_and_class_balance_of_known_probabilities():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.0, 0.5], [0.1, 0.2, 0.7]], dtype=torch.float64)
    assert im.confidence(probs) == pytest.approx((0.9 + 0.8 + 0.5 + 0.7) / 4)
    assert im.class_balance(probs) == pytest.approx([0.5, 0.25, 0.25])


def test_reference_error_is_rms_per_image():
    ref = torch.zeros(3, 1, 16, 16)
    x = ref.clone()
    x[0] += 0.2
    x[1, 0, :8] = 1.0     # half the pixels off by 1 -> RMS sqrt(1/2)
    assert im.reference_error(ref, ref) == 0
    assert im.reference_error(x, ref) == pytest.approx((0.2 + np.sqrt(0.5)) / 3, rel=1e-6)
    with pytest.raises(ScheduleLabError):
        im.reference_error(x[:2], ref)


def test_metrics_reject_bad_inputs():
    with pytest.raises(ScheduleLabError):
        im.image_metrics(torch.zeros(4, 3, 16, 16))
    bad = torch.zeros(4, 1, 16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ScheduleLabError, match="NaN"):
        im.image_metrics(bad)
    with pytest.raises(ScheduleLabError):
        im.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_evaluate_images_over_seeds_gives_cis(tmp_path, monkeypatch):
    from core.models.digits import load_digits_model
    from core.schedules import make_schedule
    monkeypatch.setattr(im, "CACHE", tmp_path)
    monkeypatch.setitem(im.REFERENCE, "steps", 15)                      # a cheaper reference for the test
    model = load_digits_model()
    sched = make_schedule("karras", 4)
    r = im.evaluate_images(model, sched, "dpmpp_2m", n=24, seeds=(0, 1), kid_subsets=5)
    assert r["nfe"] == 4 and r["n"] == 24 and len(r["per_seed"]) == 2
    for k in ("fd", "kid", "confidence", "ref_error"):
        assert np.isfinite(r[k]) and np.isfinite(r[k + "_ci"]) and r[k + "_ci"] >= 0
    assert r["per_seed"][0]["fd"] != r["per_seed"][1]["fd"]        # different noise per seed
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2          # one cached reference per seed
    again = im.evaluate_images(model, sched, "dpmpp_2m", n=24, seeds=(0, 1), kid_subsets=5)
    assert again["fd"] == r["fd"] and again["ref_error"] == r["ref_error"]   # seeded: reproducible
    sde = im.evaluate_images(model, sched, "dpmpp_2m_sde", n=24, seeds=(0,), kid_subsets=5)
    assert sde["ref_error"] is None                                  # defined for ODE solvers only
