import torch

from eva8_utils import augment as A


def _batch(b=6, c=3, h=32, w=32):
    return torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)


def test_crop_keeps_shape_and_moves_content_by_the_offset():
    x = _batch()
    p = 4
    oy = torch.tensor([0, 4, 8, 1, 7, 4])
    ox = torch.tensor([8, 4, 0, 3, 2, 6])
    out = A.crop(x, p, oy, ox)
    assert out.shape == x.shape
    for b in range(x.shape[0]):
        dy, dx = int(oy[b]) - p, int(ox[b]) - p
        for i in range(32):
            for j in (0, 13, 31):
                si, sj = i + dy, j + dx
                expect = x[b, :, si, sj] if 0 <= si < 32 and 0 <= sj < 32 else torch.zeros(3)
                assert torch.equal(out[b, :, i, j], expect)
    assert torch.equal(out[1], x[1])  # offset == padding: unchanged


def test_reflect_padding_crop_fills_from_the_image():
    x = _batch(1)
    out = A.crop(x, 2, torch.tensor([0]), torch.tensor([0]), pad_mode="reflect")
    assert torch.equal(out[0, :, 2:, 2:], x[0, :, :30, :30])
    assert torch.equal(out[0, :, 0, 2:], x[0, :, 2, :30])  # reflected row


def test_flip_mirrors_exactly_the_masked_samples():
    x = _batch(4)
    mask = torch.tensor([True, False, True, False])
    out = A.hflip(x, mask)
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2, :, :, 0], x[2, :, :, 31])


def test_cutout_zeroes_exactly_one_clipped_square_per_sample():
    x = torch.ones(5, 3, 32, 32)
    cy = torch.tensor([16, 0, 31, 8, 20])
    cx = torch.tensor([16, 0, 31, 30, 5])
    out = A.cutout(x, 16, cy, cx, torch.ones(5, dtype=torch.bool))
    for b in range(5):
        zero = out[b, 0] == 0
        y0, x0 = int(cy[b]) - 8, int(cx[b]) - 8
        ys = range(max(y0, 0), min(y0 + 16, 32))
        xs = range(max(x0, 0), min(x0 + 16, 32))
        expect = torch.zeros(32, 32, dtype=torch.bool)
        expect[ys.start:ys.stop, xs.start:xs.stop] = True
        assert torch.equal(zero, expect)
        assert torch.equal(out[b, 1] == 0, expect) and torch.equal(out[b, 2] == 0, expect)
    assert (out[0] == 0).sum() == 3 * 256           # fully inside: a whole 16x16 square
    assert (out[1, 0] == 0).sum() == 8 * 8          # corner: clipped to 8x8


def test_cutout_probability_skips_samples():
    x = torch.ones(2, 3, 32, 32)
    out = A.cutout(x, 16, torch.tensor([16, 16]), torch.tensor([16, 16]), torch.tensor([True, False]))
    assert (out[0] == 0).any() and not (out[1] == 0).any()


def test_sampled_parameters_differ_between_samples_and_repeat_with_the_seed():
    aug = A.AugmentConfig(affine_p=0.5, grayscale_p=0.5, jitter_p=0.5)
    p1 = A.sample_params(1000, aug, (32, 32), torch.Generator().manual_seed(7))
    p2 = A.sample_params(1000, aug, (32, 32), torch.Generator().manual_seed(7))
    p3 = A.sample_params(1000, aug, (32, 32), torch.Generator().manual_seed(8))
    for k in p1:
        assert torch.equal(p1[k], p2[k])
    assert not torch.equal(p1["crop_y"], p3["crop_y"])
    # independent per sample, and covering their ranges
    assert set(p1["crop_y"].tolist()) == set(range(9))
    assert 0.4 < p1["flip"].float().mean() < 0.6
    assert p1["cut_y"].min() >= 0 and p1["cut_y"].max() <= 31 and len(set(p1["cut_y"].tolist())) > 20
    assert 0.4 < p1["affine"].float().mean() < 0.6
    assert p1["angle"].abs().max() <= 15 and p1["angle"].std() > 5


def test_new_augmentations_keep_shapes_and_are_reproducible():
    aug = A.AugmentConfig(crop_padding=0, flip="none", cutout=0, affine_p=1.0, grayscale_p=0.5, jitter_p=1.0)
    x = torch.rand(8, 3, 32, 32)
    outs = []
    for _ in range(2):
        p = A.sample_params(8, aug, (32, 32), torch.Generator().manual_seed(3))
        y = A.apply_geometric(A.apply_colour(x.clone(), p), p, aug)
        assert y.shape == x.shape and torch.isfinite(y).all()
        outs.append(y)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], x)


def test_grayscale_makes_channels_equal_and_keeps_others():
    x = torch.rand(2, 3, 8, 8)
    out = A.grayscale(x, torch.tensor([True, False]))
    assert torch.allclose(out[0, 0], out[0, 1]) and torch.allclose(out[0, 1], out[0, 2])
    assert torch.allclose(out[0, 0], 0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2])
    assert torch.equal(out[1], x[1])


def test_brightness_contrast_at_factor_one_is_identity_and_scales_otherwise():
    x = torch.rand(2, 3, 8, 8) * 0.5
    same = A.brightness_contrast(x, torch.tensor([True, True]), torch.ones(2), torch.ones(2))
    assert torch.allclose(same, x, atol=1e-6)
    brighter = A.brightness_contrast(x, torch.tensor([True, True]), torch.full((2,), 1.5), torch.ones(2))
    assert torch.allclose(brighter, x * 1.5, atol=1e-6)


def test_affine_with_neutral_parameters_is_identity_and_shift_moves_content():
    x = _batch(2, h=16, w=16)
    ones, zeros = torch.ones(2), torch.zeros(2)
    mask = torch.tensor([True, True])
    same = A.affine(x, mask, zeros, zeros, ones, zeros)
    assert torch.allclose(same, x, atol=1e-3)
    shifted = A.affine(x, mask, torch.full((2,), 2 / 16), zeros, ones, zeros)  # 2 pixels right
    assert torch.allclose(shifted[:, :, :, 2:], x[:, :, :, :-2], atol=1e-2)
    assert torch.equal(shifted[:, :, :, :2], torch.zeros_like(shifted[:, :, :, :2]))
