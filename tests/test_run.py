from anna.run import feasible_sizes


def test_feasible_sizes_clip_and_shift():
    assert feasible_sizes("0.50:0.60:0.05", 0.5209) == [0.521, 0.55, 0.6]
    # a component whose smallest plan is above the whole sweep sweeps the same span above it
    assert feasible_sizes("0.50:0.60:0.05", 0.7939) == [0.794, 0.844, 0.894]
    assert feasible_sizes("0.50:0.50:0.01", 0.7939) == [0.794]
