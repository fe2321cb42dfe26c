import torch

from anna.analyze.batching import merge_samples


def _unet_sample(seed, t):
    g = torch.Generator().manual_seed(seed)
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 7, 4, generator=g),
        "added_cond_kwargs": {"text_embeds": torch.randn(2, 3, generator=g)},
        "return_dict": False,
    }
    return (torch.randn(2, 4, 2, 2, generator=g), torch.tensor(t)), kwargs


def test_merge_concatenates_and_expands_timesteps():
    samples = [_unet_sample(i, 10 * i) for i in range(5)]
    merged = merge_samples(samples, max_batch=4)
    assert len(merged) == 3  # 2 + 2 + 1 samples of 2 rows
    (x, t), kw = merged[0]
    assert x.shape == (4, 4, 2, 2) and torch.equal(t, torch.tensor([0, 0, 10, 10]))
    assert torch.equal(kw["encoder_hidden_states"][2:], samples[1][1]["encoder_hidden_states"])
    assert kw["return_dict"] is False
    assert merged[2] is samples[4]


def test_incompatible_samples_stay_apart():
    a = {"input_ids": torch.zeros(2, 5, dtype=torch.long)}
    b = {"input_ids": torch.zeros(2, 7, dtype=torch.long)}  # another padded length
    assert merge_samples([a, b]) == [a, b]
    c = {"input_ids": torch.ones(3, 5, dtype=torch.long)}
    (m,) = merge_samples([a, c])
    assert m["input_ids"].shape == (5, 5)


def test_merged_run_matches_separate_runs(tiny):
    unet = tiny.component("unet")
    g = torch.Generator().manual_seed(0)
    samples = [
        (
            (torch.randn(2, 4, 8, 8, generator=g), torch.tensor(float(t))),
            {
                "encoder_hidden_states": torch.randn(2, 77, 64, generator=g),
                "added_cond_kwargs": {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6)},
            },
        )
        for t in (999, 500)
    ]
    with torch.no_grad():
        separate = torch.cat([unet(*a, **k).sample for a, k in samples])
        (a, k), = merge_samples(samples)
        merged = unet(*a, **k).sample
    assert torch.allclose(merged, separate, atol=1e-5)


def test_first_rows_takes_whole_samples_up_to_the_rows_asked():
    from anna.analyze.batching import first_rows, rows_of

    samples = [torch.zeros(32, 3), torch.zeros(32, 3), {"x": torch.zeros(8, 2)}, torch.tensor(1.0)]
    assert rows_of(samples) == 32 + 32 + 8 + 1
    def ids(xs):
        return [id(x) for x in xs]

    assert ids(first_rows(samples, 64)) == ids(samples[:2]) and ids(first_rows(samples, 65)) == ids(samples[:3])
    assert ids(first_rows(samples, 1)) == ids(samples[:1]) and ids(first_rows(samples, 0)) == ids(samples)
    assert ids(first_rows(samples, 10_000)) == ids(samples)
