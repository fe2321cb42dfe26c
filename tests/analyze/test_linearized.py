"""The linearised error model: it matches the exact model where the network is linear in the deltas, stays close
to first order through a nonlinearity, prunes dominated options, and needs far fewer passes at SDXL size."""

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from nets import Branches, Chain, calibrated_quantizer
from torch import nn

from anna.analyze.error_model import build_error_model, measured_mse, reference_outputs
from anna.analyze.fidelity import near_front_plans, smallest_ratio
from anna.analyze.linearized import build_linear_model, count_passes, dominated
from anna.analyze.validate import spearman

STEPS = {"coarse": 0.05, "fine": 0.01, "awful": 0.5}


class GridQuantizer:
    """Rounds a unit's weights to the option's grid step: `unit_quantized` for the linear model, and a context
    manager that swaps the copies in, for the exact model and for measuring."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def quantized_copy(self, name: str, option: str) -> nn.Module:
        clone = copy.deepcopy(self.model.get_submodule(name))
        with torch.no_grad():
            clone.weight.copy_(torch.round(clone.weight / STEPS[option]) * STEPS[option])
        return clone

    @contextmanager
    def unit_quantized(self, name: str, option: str, memo=None):
        yield self.quantized_copy(name, option)

    def __call__(self, assignment):

        @contextmanager
        def swap():
            saved = {}
            for name, opt in assignment.items():
                if opt != "fp16":
                    parent, _, leaf = name.rpartition(".")
                    saved[name] = self.model.get_submodule(name)
                    setattr(self.model.get_submodule(parent), leaf, self.quantized_copy(name, opt))
            try:
                yield
            finally:
                for name, module in saved.items():
                    parent, _, leaf = name.rpartition(".")
                    setattr(self.model.get_submodule(parent), leaf, module)

        return swap()


def _setup(cls, options=("fp16", "coarse", "fine")):
    torch.manual_seed(0)
    model = cls(n=4).eval()
    samples = [torch.randn(64, 16) for _ in range(4)]
    units = [f"units.{i}" for i in range(len(model.units))]
    return model, samples, units, list(options), GridQuantizer(model)


@pytest.mark.parametrize("cls,tol", [(Branches, 0.12), (Chain, 0.2)])
def test_linear_model_matches_measured_mse(cls, tol):
    model, samples, units, options, quantizer = _setup(cls)
    lin = build_linear_model(model, samples, units, options, quantizer, model, probes=16, progress=False)
    exact = build_error_model(model, samples, units, options, quantizer, sketch_k=0, progress=False)
    # own terms: unbiased estimates of the exact per-unit MSEs (256 rows x 16 probes per sample)
    assert np.all(np.abs(lin.diag[:, 1:] / exact.diag[:, 1:] - 1) < tol)
    assert np.all(lin.diag[:, 0] == 0)
    refs = reference_outputs(model, samples)
    rng = np.random.default_rng(0)
    predicted, real = [], []
    for _ in range(12):
        choice = rng.integers(0, 3, len(units))
        with quantizer({u: options[c] for u, c in zip(units, choice, strict=True)}):
            real.append(measured_mse(model, samples, refs))
        predicted.append(lin.predict(choice))
    rel = np.abs(np.array(predicted) - real) / np.maximum(real, 1e-30)
    assert np.median(rel[np.array(real) > 0]) < tol
    assert spearman(predicted, real) > 0.9


@pytest.mark.parametrize("options", [("fp16", "fine", "coarse", "awful"), ("fp16", "coarse", "fine", "awful")])
def test_linear_model_counts_its_passes_and_prunes_dominated_options(options):
    model, samples, units, options, quantizer = _setup(Branches, options)
    sizes = np.tile(np.array([32, 16, 16, 16]), (len(units), 1))  # the three grids cost the same
    passes = {"forward": 0, "backward": 0, "local": 0}
    made = []
    copy_of = quantizer.quantized_copy
    quantizer.quantized_copy = lambda name, option: made.append((name, option)) or copy_of(name, option)

    def count(kind):
        passes[kind] += 1

    em = build_linear_model(model, samples, units, options, quantizer, model, probes=3, progress=False,
                            on_pass=count, sizes=sizes)
    # coarse and awful are dominated by fine (same size, larger error) after the first sample: run there only
    assert passes == {"forward": 4, "backward": 12, "local": 4 * 3 + 3 * 4 * 1}
    assert len(made) == 4 * (3 + 1)  # each unit-option once, and fine again: it waited for its same-size rivals
    fine = options.index("fine")
    assert np.all(np.isfinite(em.diag[:, [0, fine]]))
    assert np.all(np.isinf(np.delete(em.diag, [0, fine], axis=1)))


def test_dominated_options():
    own = np.array([[0.0, 2.0, 1.0, 1.0], [0.0, 1.0, 3.0, 0.5]])
    sizes = np.array([[4, 2, 2, 2], [4, 2, 1, 3]])
    mask = dominated(own, sizes)
    # unit 0: option 1 is worse than 2 at the same size; 3 ties 2 (same size and error: the lower index stays)
    # unit 1: nothing no larger is better (option 2 is the smallest, 3 is larger than 1 but better)
    assert mask.tolist() == [[False, True, False, True], [False, False, False, False]]
    assert dominated(own, sizes, margin=4.0).tolist() == [[False] * 4, [False] * 4]


def test_passes_at_sdxl_size(sdxl_model):
    from anna.analyze.stage import default_probes
    from anna.inventory import build_inventory
    from anna.options.registry import default_bag

    kinds = [u.kind for u in build_inventory(sdxl_model).units]
    bag = default_bag(kinds)
    assert len(kinds) > 300 and len(bag) == 12  # the UNet bag
    for samples, rows in ((1, 16), (8, 2)):  # 8 cached CFG pairs, merged into one batch or not
        p = count_passes(len(kinds), len(bag), samples, rows, default_probes(kinds, samples * rows))
        assert p["linear"] * 20 <= p["exact"]


def test_near_front_plans_fit_their_budgets():
    rng = np.random.default_rng(0)
    n, m = 12, 3
    sizes = np.column_stack([np.full(n, 40), rng.integers(10, 20, n), rng.integers(20, 30, n)]).astype(np.int64)
    deltas = rng.normal(size=(n * m, 6))
    deltas[::m] = 0  # fp16: no delta
    gram = deltas @ deltas.T
    allowed = np.ones((n, m), dtype=bool)
    total = int(sizes[:, 0].sum()) + 100
    plans = near_front_plans(gram, sizes, 100, total, allowed, 20, seed=1)
    lo = smallest_ratio(sizes, 100, total)
    assert len(plans) >= 15 and len({tuple(c) for _, c in plans}) == len(plans)
    for ratio, choice in plans:
        size = (100 + sizes[np.arange(n), choice].sum()) / total
        assert lo - 1e-9 <= ratio <= lo + 0.10 + 1e-9
        assert size <= ratio + 1e-9 or size <= lo + 1e-9


def test_sample_groups_quantize_each_unit_option_once_and_change_nothing():
    model, samples, units, options, quantizer = _setup(Branches, ("fp16", "coarse", "fine", "awful"))
    sizes = np.tile(np.array([32, 16, 16, 16]), (len(units), 1))
    made = []
    copy_of = quantizer.quantized_copy
    quantizer.quantized_copy = lambda name, option: made.append((name, option)) or copy_of(name, option)
    models = {}
    for group_bytes in (1 << 30, 1):  # every sample in one group; one sample per group
        made.clear()
        models[group_bytes] = build_linear_model(model, samples, units, options, quantizer, model, probes=3,
                                                 progress=False, sizes=sizes, group_bytes=group_bytes)
        # one group: each unit-option once, and the survivor again after its same-size rivals; one sample per
        # group: the 3 options, then the survivor on each other sample
        assert len(made) == (4 * 3 + 4 * 1 if group_bytes > 1 else 4 * 3 + 3 * 4 * 1)
    one, per_sample = models.values()
    assert np.array_equal(one.diag, per_sample.diag) and np.array_equal(one.sketches, per_sample.sketches)


def test_same_trials_are_copied_not_run():
    model, samples, units, options, quantizer = _setup(Branches)
    local = []
    same = {(i, 2): 1 for i in range(len(units))}  # "fine" quantizes every unit exactly as "coarse": copy it
    em = build_linear_model(model, samples, units, options, quantizer, model, probes=3, progress=False,
                            on_pass=lambda kind: local.append(kind) if kind == "local" else None, same_as=same)
    assert len(local) == len(units) * len(samples)
    assert np.array_equal(em.diag[:, 2], em.diag[:, 1]) and np.array_equal(em.fisher[:, 2], em.fisher[:, 1])


def test_linear_model_on_a_vae_decoder(tmp_path, coco_tsv):
    """A conv decoder gets a model: every unit keeps FP16 and absmax FP8, and every option it keeps has an error."""
    from anna.adapters import load_model
    from anna.analyze.stage import analyze, load_analysis
    from anna.calibrate import calibrate
    from anna.prompts import load_prompts

    model = load_model("tiny-sdxl")
    calibrate(model, tmp_path, component="vae_decoder", prompts=load_prompts(f"{coco_tsv}:1-1"), cache_samples=1,
              progress=False, log=None)
    analyze(tmp_path, model=model, validate=0, progress=False, echo=None)
    em = load_analysis(tmp_path).error_model
    kept = np.isfinite(em.diag)  # the options dominated early on a unit are pruned there (infinite)
    assert len(em.units) > 20 and kept[:, :2].all() and np.all(em.diag[:, 1:][kept[:, 1:]] > 0)


@pytest.mark.parametrize("spatial", [False, True])
def test_attention_options_share_projection_outputs_and_change_nothing(monkeypatch, spatial):
    """The per-projection options of an attention unit reuse the FP8 projections that an earlier option computed on
    the same input: the model is bit for bit the one without sharing, with fewer projection runs. A spatial (VAE)
    attention rebuilds its projections' input (group norm, reshape) in each run: equal values match too."""
    from diffusers.models.attention_processor import Attention

    from anna.options.memo import SharedLinear
    from anna.options.registry import TRANSFORMER_BAG
    from anna.options.wrappers import QuantLinear

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = Attention(query_dim=32, heads=2, dim_head=16, norm_num_groups=4 if spatial else None)
            self.head = nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.attn(x)
            return self.head(h.flatten(2).transpose(1, 2) if spatial else h)

    torch.manual_seed(0)
    model = Toy().eval()
    samples = [torch.randn(*((4, 32, 2, 5) if spatial else (4, 10, 32))) for _ in range(3)]
    quantizer = calibrated_quantizer(model, samples)
    runs, fp16_runs = [], []
    forward, fp16_forward = QuantLinear._forward, nn.Linear.forward
    monkeypatch.setattr(QuantLinear, "_forward", lambda self, x: runs.append(1) or forward(self, x))
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: (type(self) is SharedLinear and fp16_runs.append(1))
                        or fp16_forward(self, x))
    models = {}
    for memo_bytes in (0, 1 << 30):
        runs.clear()
        fp16_runs.clear()
        models[memo_bytes] = build_linear_model(model, samples, ["attn", "head"], list(TRANSFORMER_BAG), quantizer,
                                                model, probes=2, progress=False, memo_bytes=memo_bytes)
        models[memo_bytes, "runs"], models[memo_bytes, "fp16"] = len(runs), len(fp16_runs)
    assert np.array_equal(models[0].sketches, models[1 << 30].sketches)
    assert np.array_equal(models[0].diag, models[1 << 30].diag) and np.all(models[0].diag[0, 1:] > 0)
    # per sample, without sharing: fp8-absmax's 4 projections, then the fp16math options' 4+3+3+3+2+2+1, and the
    # head once per option (each quantizes it as fp8-absmax). With it: fp8-absmax's 4 (its inputs are quantized by
    # the unit's tap, anew in each run), q, k and v once, the out projection in each of the 4 options where it is FP8
    # (its input, the attention output, is new in each run), and the head once.
    assert models[0, "runs"] == 3 * (4 + 18 + 8) and models[1 << 30, "runs"] == 3 * (4 + 3 + 4 + 1)
    # projections kept in FP16: k in 3 options, v in 4, o in 3; shared, k and v run once (o's input is new each time)
    assert models[0, "fp16"] == 3 * (3 + 4 + 3) and models[1 << 30, "fp16"] == 3 * (1 + 1 + 3)
