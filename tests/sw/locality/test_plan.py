import numpy as np
import pytest
import torch

from velcro.sw.errors import PlanError
from velcro.sw.locality.plan import Plan, applied, compress, percentile_mask, plan_C, scores
from velcro.sw.locality.profile import LayerProfile, Profile, profile
from velcro.sw.locality.taps import tap
from velcro.sw.models import reference_cnn


def toy_profile():
    a = np.array([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])       # 8 elements
    b = np.arange(12, dtype=np.float64).reshape(3, 2, 2)                       # 12 elements
    return Profile([LayerProfile("a", a + 10, a), LayerProfile("b", -b, b)], count=5)


def test_threshold_zero_selects_nothing_and_hundred_everything():
    score = np.zeros((2, 3, 3))
    assert not percentile_mask(score, 0).any()
    assert percentile_mask(score, 100).all()


def test_percentile_ties_are_replaced_together():
    score = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6], dtype=float)
    # 10 % of ten elements is one, but four elements share the lowest score.
    assert percentile_mask(score, 10).sum() == 4
    assert percentile_mask(score, 40).sum() == 4
    assert percentile_mask(score, 41).sum() == 5
    assert percentile_mask(score, 50).sum() == 5
    np.testing.assert_array_equal(percentile_mask(score, 60), score <= 2)


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan")])
def test_threshold_out_of_range_is_rejected(bad):
    with pytest.raises(PlanError, match="out of range"):
        percentile_mask(np.zeros(4), bad)


def test_C_counts_actual_masks():
    prof = toy_profile()
    plan = compress(prof, [50, 25])
    # Layer a: variances 0,0,0,0,1,2,3,4: the 50th percentile is 0 -> 4 tied zeros.
    # Layer b: 0..11, 25th percentile (inverted CDF) is 2 -> 3 elements.
    assert [layer.replaced for layer in plan.layers] == [4, 3]
    assert plan.C == pytest.approx(7 / 20)
    assert plan_C(prof, [50, 25], scores(prof, "variance")) == pytest.approx(7 / 20)
    assert compress(prof, [100, 100]).C == 1.0 and compress(prof, [0, 0]).C == 0.0


def test_threshold_count_must_match_layers():
    with pytest.raises(PlanError, match="3 thresholds given for 2 conv-activations"):
        compress(toy_profile(), [1, 2, 3])


def test_relative_criterion_is_invariant_to_channel_scale():
    variance = np.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]])
    mean = np.ones_like(variance)
    scale = np.array([1.0, 10.0])[:, None, None]
    plain = Profile([LayerProfile("a", mean, variance)], 5)
    scaled = Profile([LayerProfile("a", mean * scale, variance * scale ** 2)], 5)
    np.testing.assert_allclose(scores(plain, "relative")[0], scores(scaled, "relative")[0])
    # Raw variance: after scaling, channel 1 no longer shares in the lowest half.
    assert compress(plain, [50]).layers[0].mask[1].sum() == 2
    assert compress(scaled, [50]).layers[0].mask[1].sum() == 0
    assert compress(scaled, [50], "relative").layers[0].mask[1].sum() == 2


def test_fisher_criterion_needs_gradients_and_weights_variance():
    prof = toy_profile()
    with pytest.raises(PlanError, match="needs a profile with gradients"):
        scores(prof, "fisher")
    for layer in prof.layers:
        layer.grad_sq = np.full(layer.shape, 2.0)
    np.testing.assert_allclose(scores(prof, "fisher")[1], 2 * prof.layers[1].variance)


def test_unknown_criterion():
    with pytest.raises(PlanError, match="unknown criterion 'entropy'"):
        scores(toy_profile(), "entropy")


def test_applied_plan_changes_outputs_and_is_removable(rng):
    torch.manual_seed(0)
    model = reference_cnn().eval()
    tapped = tap(model)
    images = rng.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    plan = compress(profile(tapped, images), [30, 60, 0, 100])
    x = torch.from_numpy(images.astype(np.float32) / 255)
    with torch.no_grad():
        with applied(tapped, plan):
            compressed = tapped(x)
        plain = tapped(x)
        original = model(x)
    torch.testing.assert_close(plain, original, rtol=0, atol=0)
    assert not torch.equal(compressed, plain)
    # conv4 is fully replaced: the dense layers see only constants, so every image
    # gives the same logits.
    torch.testing.assert_close(compressed, compressed[:1].expand_as(compressed))


def test_replaced_elements_equal_their_means(rng):
    torch.manual_seed(0)
    tapped = tap(reference_cnn().eval())
    images = rng.integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    plan = compress(profile(tapped, images), [50, 50, 50, 50])
    got = []
    with applied(tapped, plan):
        # A hook registered after the plan's sees the replaced output.
        h = tapped.taps[2].register_forward_hook(lambda m, i, o: got.append(o.detach()))
        with torch.no_grad():
            tapped(torch.from_numpy(images.astype(np.float32) / 255))
        h.remove()
    out = got[0].numpy()
    layer = plan.layers[2]
    np.testing.assert_array_equal(out[:, layer.mask], np.broadcast_to(layer.mean[layer.mask],
                                                                      out[:, layer.mask].shape))
    assert np.ptp(out[:, ~layer.mask], axis=0).max() > 0


def test_plan_file_roundtrip(tmp_path):
    plan = compress(toy_profile(), [50, 25], "variance")
    plan.save(tmp_path / "plan.npz")
    back = Plan.load(tmp_path / "plan.npz")
    assert back.thresholds == [50, 25] and back.C == plan.C
    for a, b in zip(plan.layers, back.layers, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.mean, b.mean)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(PlanError):
        Plan.load(tmp_path / "junk.npz")
