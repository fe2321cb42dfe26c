"""The error model on tensors and small modules: exact where the deltas add up, and the sketch's error bound."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from nets import Branches, Chain
from torch import nn

from anna.analyze.error_model import build_error_model, measured_mse, reference_outputs
from anna.analyze.sketch import CountSketch


def grid_quantizer(model: nn.Module):
    """Round the weights of the named units to a grid whose step is the option's 'level' (fp16: unchanged)."""
    steps = {"coarse": 0.05, "fine": 0.01}

    @contextmanager
    def quantize(assignment):
        saved = {}
        for name, opt in assignment.items():
            if opt == "fp16":
                continue
            w = model.get_submodule(name).weight
            saved[name] = w.detach().clone()
            with torch.no_grad():
                w.copy_(torch.round(w / steps[opt]) * steps[opt])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, w in saved.items():
                    model.get_submodule(name).weight.copy_(w)

    return quantize


def _setup(cls, seed=0):
    torch.manual_seed(seed)
    model = cls().eval()
    samples = [torch.randn(8, 16) for _ in range(3)]
    units = [f"units.{i}" for i in range(len(model.units))]
    return model, samples, units, ["fp16", "coarse", "fine"], grid_quantizer(model)


def test_exact_when_deltas_add_up():
    model, samples, units, options, quantize = _setup(Branches)
    em = build_error_model(model, samples, units, options, quantize, sketch_k=0, progress=False)
    refs = reference_outputs(model, samples)
    rng = np.random.default_rng(0)
    for _ in range(10):
        choice = rng.integers(0, 3, len(units))
        with quantize({u: options[c] for u, c in zip(units, choice, strict=True)}):
            real = measured_mse(model, samples, refs)
        assert em.predict(choice) == pytest.approx(real, rel=1e-5)
        g = em.gram()
        t = np.zeros(g.shape[0])
        t[np.arange(len(units)) * len(options) + choice] = 1
        assert t @ g @ t == pytest.approx(real, rel=1e-5)
    assert np.all(em.diag[:, 0] == 0) and np.all(em.diag[:, 1] > em.diag[:, 2])  # coarse is worse than fine


def test_sketch_error_is_bounded():
    model, samples, units, options, quantize = _setup(Chain)
    exact = build_error_model(model, samples, units, options, quantize, sketch_k=0, progress=False)
    rng = np.random.default_rng(1)
    choices = [rng.integers(0, 3, len(units)) for _ in range(20)]
    for k in (64, 256):
        sk = build_error_model(model, samples, units, options, quantize, sketch_k=k, progress=False)
        assert np.array_equal(sk.diag, exact.diag)  # the diagonal is exact
        errs = [abs(sk.predict(c) - exact.predict(c)) / exact.predict(c) for c in choices if c.any()]
        # D = 384 elements; relative error of a sum of cross terms shrinks like 1/sqrt(k)
        assert np.median(errs) < 2.0 / np.sqrt(k)


def test_count_sketch_inner_products_unbiased():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    b = 0.5 * a + b
    est = [float(CountSketch(256, seed=s)(a, 0) @ CountSketch(256, seed=s)(b, 0)) for s in range(200)]
    true = float(a @ b)
    bound = float(torch.sqrt((a.norm() ** 2 * b.norm() ** 2 + true**2) / 256))
    assert abs(np.mean(est) - true) < 4 * bound / np.sqrt(200)
    assert np.std(est) < 1.2 * bound


def test_fisher_score_estimates_own_mse():
    model, samples, units, options, quantize = _setup(Branches)
    samples = [torch.randn(64, 16) for _ in range(8)]
    em = build_error_model(
        model, samples, units, options, quantize, sketch_k=0, progress=False, component=model, fisher_samples=8
    )
    # d(sum y*r)/d(unit out) = r for a sum of branches, so E[score] = ||delta||^2 = diag * D
    ratio = em.fisher[:, 1:] / (em.diag[:, 1:] * em.n_elements)
    assert np.all(np.abs(ratio - 1) < 0.15)
    assert np.all(em.fisher[:, 0] == 0)


def test_fit_correction_recovers_scales():
    from anna.analyze.validate import fit_correction

    rng = np.random.default_rng(0)
    own, cross = rng.uniform(1, 2, 40), rng.uniform(-0.5, 1, 40)
    a, b = fit_correction(own, cross, 0.8 * own + 0.3 * cross)
    assert a == pytest.approx(0.8, abs=1e-6) and b == pytest.approx(0.3, abs=1e-6)
    _, b = fit_correction(own, cross, own - 0.5 * cross)  # flipped interactions are clamped, never fitted
    assert b == 0.0
