import numpy as np
import pytest
import torch
from torch import nn

from velcro.sw.errors import ModelError, PlanError
from velcro.sw.locality.profile import Profile, RunningMoments, profile
from velcro.sw.models import reference_cnn


@pytest.mark.parametrize("block_rows", [None, 1, 3])
@pytest.mark.parametrize("chunks", [[500], [1, 1, 498], [7, 100, 3, 390], [250, 250]])
def test_running_moments_equal_two_pass_numpy(rng, monkeypatch, chunks, block_rows):
    if block_rows:  # batches reduced a few rows at a time through the work buffer
        monkeypatch.setattr(RunningMoments, "BLOCK_BYTES", 8 * 20 * block_rows)
    data = rng.normal(3.0, 2.5, (sum(chunks), 4, 5)) * rng.uniform(0, 10, (4, 5))
    m = RunningMoments((4, 5))
    if block_rows:
        assert m._rows == block_rows
    start = 0
    for n in chunks:
        m.update(torch.from_numpy(data[start:start + n]))
        start += n
    assert m.count == len(data)
    np.testing.assert_allclose(m.mean.numpy(), data.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.variance.numpy(), data.var(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("splits", [[1, 499], [250, 250], [7, 100, 3, 390]])
def test_merged_moments_equal_one_stream(rng, splits):
    import pickle

    data = 50.0 + rng.normal(0, 0.5, (sum(splits), 3, 2)) * rng.uniform(0, 4, (3, 2))
    whole, merged, start = RunningMoments((3, 2)), RunningMoments((3, 2)), 0
    whole.update(torch.from_numpy(data))
    for n in splits:
        part = RunningMoments((3, 2))
        for chunk in np.array_split(data[start:start + n], 3):
            part.update(torch.from_numpy(chunk))
        # The state workers send back: count and moments, without the work buffers.
        merged.merge(pickle.loads(pickle.dumps(part)))
        start += n
    merged.merge(RunningMoments((3, 2)))  # nothing to add
    assert merged.count == whole.count == len(data)
    np.testing.assert_allclose(merged.mean.numpy(), data.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.variance.numpy(), data.var(0), rtol=1e-11)
    np.testing.assert_allclose(merged.variance.numpy(), whole.variance.numpy(), rtol=1e-11)
    with pytest.raises(ValueError, match="cannot merge moments of shape"):
        merged.merge(RunningMoments((2, 3)))


def test_running_moments_stay_exact_for_large_offsets(rng):
    data = 1e6 + rng.normal(0, 1e-2, (1000, 3))
    m = RunningMoments((3,))
    for chunk in np.array_split(data, 37):
        m.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(m.variance.numpy(), data.var(0), rtol=1e-6)


def activations(model, images):
    """Conv-activation outputs by a plain forward with hooks on the ReLU modules."""
    outs = []
    handles = [getattr(model, f"relu{k}").register_forward_hook(
        lambda mod, i, o: outs.append(o.detach().double())) for k in range(1, 5)]
    with torch.no_grad():
        model(torch.from_numpy(images.astype(np.float32) / 255))
    for h in handles:
        h.remove()
    return outs


def test_profile_matches_two_pass_statistics_on_reference_model(rng):
    torch.manual_seed(0)
    model = reference_cnn().eval()
    images = rng.integers(0, 256, (37, 1, 28, 28), dtype=np.uint8)
    prof = profile(model, images, batch_size=10)
    expected = activations(model, images)
    assert prof.names == ["conv1", "conv2", "conv3", "conv4"]
    assert [layer.shape for layer in prof.layers] == [(16, 28, 28), (32, 28, 28), (32, 14, 14),
                                                      (64, 4, 4)]
    for layer, act in zip(prof.layers, expected, strict=True):
        np.testing.assert_allclose(layer.mean, act.mean(0).numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(layer.variance, act.var(0, unbiased=False).numpy(),
                                   rtol=1e-5, atol=1e-9)
    same = profile(model, images, batch_size=37)
    for a, b in zip(prof.layers, same.layers, strict=True):
        np.testing.assert_allclose(a.variance, b.variance, rtol=1e-9, atol=1e-12)


def test_sensitivity_is_mean_squared_gradient_at_own_prediction(rng):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 5 * 5, 3))
    images = rng.integers(0, 256, (6, 1, 5, 5), dtype=np.uint8)
    prof = profile(model, images, batch_size=4, sensitivity=True)
    grads = []
    for img in images:
        x = torch.from_numpy(img[None].astype(np.float32) / 255)
        a = model[1](model[0](x))
        a.retain_grad()
        logits = model[3](model[2](a))
        nn.functional.cross_entropy(logits, logits.argmax(1)).backward()
        grads.append(a.grad[0].double() ** 2)
    np.testing.assert_allclose(prof.layers[0].grad_sq, torch.stack(grads).mean(0).numpy(),
                               rtol=1e-5, atol=1e-12)


def test_images_of_wrong_shape_are_reported(rng):
    with pytest.raises(ModelError, match=r"images of shape \[3, 28, 28\] do not fit"):
        profile(reference_cnn(), rng.integers(0, 256, (2, 3, 28, 28), dtype=np.uint8))


def test_profile_file_roundtrip_and_corruption(tmp_path, rng):
    prof = profile(reference_cnn().eval(), rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8),
                   sensitivity=True)
    prof.save(tmp_path / "p.npz")
    back = Profile.load(tmp_path / "p.npz")
    assert back.names == prof.names and back.count == 4 and back.has_sensitivity
    for a, b in zip(prof.layers, back.layers, strict=True):
        np.testing.assert_array_equal(a.variance, b.variance)
    raw = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PlanError, match="not a readable velcro-profile"):
        Profile.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "foreign.npz", meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(PlanError, match="not a velcro-profile file"):
        Profile.load(tmp_path / "foreign.npz")
