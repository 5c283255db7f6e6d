import numpy as np
import pytest
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


# --------------------------------------------------------------------------- x/y wiring and uniformity
def test_sampled_crop_and_cutout_cover_each_axis_uniformly_on_a_non_square_image():
    aug = A.AugmentConfig(crop_padding=4, cutout=8)
    n = 40_000
    p = A.sample_params(n, aug, (16, 40), torch.Generator().manual_seed(0))
    for key, size in (("crop_y", 9), ("crop_x", 9), ("cut_y", 16), ("cut_x", 40)):
        counts = torch.bincount(p[key], minlength=size)
        assert len(counts) == size, key                      # never outside its own axis' range
        expected = n / size
        assert ((counts - expected).abs() / expected).max() < 0.12, key  # uniform
    # the two axes are drawn independently (not one value used twice)
    assert not torch.equal(p["crop_y"], p["crop_x"])
    assert abs(torch.corrcoef(torch.stack([p["crop_y"].float(), p["crop_x"].float()]))[0, 1]) < 0.03


def test_the_pipeline_applies_y_to_rows_and_x_to_columns():
    h, w, pad = 12, 20, 3
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w) + 1  # no zeros: padding shows as 0
    aug = A.AugmentConfig(crop_padding=pad, cutout=4, flip="none")
    params = {"crop_y": torch.tensor([0, 5]), "crop_x": torch.tensor([6, 1]),
              "cutout": torch.tensor([True, True]), "cut_y": torch.tensor([2, 9]), "cut_x": torch.tensor([15, 3])}
    out = A.apply_geometric(x.clone(), params, aug)
    for b in range(2):
        dy, dx = int(params["crop_y"][b]) - pad, int(params["crop_x"][b]) - pad
        cy, cx = int(params["cut_y"][b]), int(params["cut_x"][b])
        for i in range(h):
            for j in range(w):
                in_cut = cy - 2 <= i < cy + 2 and cx - 2 <= j < cx + 2
                si, sj = i + dy, j + dx
                expect = 0.0 if in_cut or not (0 <= si < h and 0 <= sj < w) else float(x[b, 0, si, sj])
                assert float(out[b, 0, i, j]) == expect, (b, i, j)


def test_cutout_covers_rows_and_columns_as_often_as_its_centres_say():
    n, h, w, size = 4000, 16, 24, 6
    g = torch.Generator().manual_seed(1)
    cy, cx = torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)
    m = A.cutout_mask((n, 1, h, w), size, cy, cx, torch.ones(n, dtype=torch.bool)).float().mean(0)[0]
    # a pixel (i, j) is covered when cy - 3 <= i < cy + 3 and likewise for columns
    rows = torch.tensor([sum(1 for c in range(h) if c - 3 <= i < c + 3) / h for i in range(h)])
    cols = torch.tensor([sum(1 for c in range(w) if c - 3 <= j < c + 3) / w for j in range(w)])
    assert torch.allclose(m, rows[:, None] * cols[None, :], atol=0.03)


# --------------------------------------------------------------------------- MixUp / CutMix
def _mix(kind, lam=0.7, box=(2, 6, 3, 9)):
    y0, y1, x0, x1 = box
    return {"apply": True, "cutmix": kind == "cutmix", "lam": lam, "y0": y0, "y1": y1, "x0": x0, "x1": x1}


def test_mixup_blends_each_image_with_its_neighbour_and_the_label_mass_sums_to_one():
    x = torch.rand(4, 3, 8, 12)
    y = torch.tensor([0, 2, 2, 1])
    xm, t = A.mix_batch(x, y, 3, _mix("mixup", lam=0.7))
    assert torch.allclose(xm, 0.7 * x + 0.3 * x.roll(1, 0))
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0].tolist() == pytest.approx([0.7, 0.3, 0.0])  # its own class 0, its partner (sample 3) class 1
    assert t[2].tolist() == pytest.approx([0.0, 0.0, 1.0])  # partner has the same class


def test_cutmix_pastes_a_box_whose_area_matches_lambda():
    x, y = torch.rand(4, 3, 8, 12), torch.tensor([0, 1, 2, 3])
    box = (2, 6, 3, 9)  # 4 x 6 of 8 x 12
    lam = 1 - (4 * 6) / (8 * 12)
    xm, t = A.mix_batch(x, y, 4, _mix("cutmix", lam=lam, box=box))
    from_partner = (xm == x.roll(1, 0)).all(1) & (xm != x).any(1)
    assert from_partner.float().mean(dim=(1, 2)).tolist() == pytest.approx([1 - lam] * 4)
    assert torch.equal(xm[:, :, 2:6, 3:9], x.roll(1, 0)[:, :, 2:6, 3:9])
    assert torch.allclose(t.sum(1), torch.ones(4)) and t[1, 1] == pytest.approx(lam) and t[1, 0] == pytest.approx(1 - lam)


def test_mix_parameters_repeat_with_the_seed_and_lambda_matches_the_box():
    aug = A.AugmentConfig(mixup=1.0, cutmix=1.0, mix_p=0.8)
    a = A.sample_mix_params(2000, aug, (16, 24), seed=5)
    b = A.sample_mix_params(2000, aug, (16, 24), seed=5)
    c = A.sample_mix_params(2000, aug, (16, 24), seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["lam"], c["lam"])
    assert 0.75 < a["apply"].mean() < 0.85 and 0.35 < a["cutmix"].mean() < 0.45   # 0.8 x 0.5
    cut = a["cutmix"]
    area = (a["y1"] - a["y0"]) * (a["x1"] - a["x0"]) / (16 * 24)
    assert np.allclose(a["lam"][cut], 1 - area[cut])                               # lambda is the real area
    assert (a["lam"][~a["apply"]] == 1).all()
    mixed = a["apply"] & ~a["cutmix"]
    assert 0.45 < a["lam"][mixed].mean() < 0.55                                    # Beta(1, 1)


def test_the_loader_yields_soft_targets_when_mixing():
    from eva8_utils.data import DeviceLoader, make_shapes

    s = make_shapes(64, 8, seed=0)
    aug = A.AugmentConfig(cutmix=1.0, mix_classes=10)

    def batches():
        ld = DeviceLoader(s.x_train, s.y_train, batch_size=16, mean=s.mean, std=s.std, train=True, aug=aug, seed=2)
        ld.set_epoch(1)
        return list(ld)

    first, again = batches(), batches()
    for (x, t), (x2, t2) in zip(first, again):
        assert t.shape == (16, 10) and torch.allclose(t.sum(1), torch.ones(16))
        assert torch.equal(x, x2) and torch.equal(t, t2)
    assert any((t.max(1).values < 1).any() for _, t in first)


@pytest.mark.parametrize("setting", [
    dict(crop_padding=2, pad_mode="reflect", flip="alternate", cutout=0),        # the fast recipes
    dict(crop_padding=4, pad_mode="reflect", flip="random", cutout=8),
    dict(crop_padding=3, pad_mode="reflect", flip="none", cutout=0),
    dict(crop_padding=0, flip="random", cutout=0),
    dict(crop_padding=2, pad_mode="reflect", flip="alternate", cutout=0, low_res_size=12, low_res_epochs=1),
], ids=["fast", "crop4-flip-cutout", "crop-only", "flip-only", "low-res"])
def test_the_loaders_uint8_gather_gives_the_general_paths_numbers_bit_for_bit(setting):
    """The training loader crops and mirrors the uint8 pixels in one gather before normalising
    (its fast path); every batch equals, bit for bit, normalising first and then padding,
    cropping, mirroring and cutting out (the general path), including non-square images."""
    from eva8_utils.data import DeviceLoader

    torch.manual_seed(0)
    x = torch.randint(0, 256, (40, 20, 24, 3), dtype=torch.uint8)  # H 20, W 24
    y = torch.randint(0, 10, (40,))
    aug = A.AugmentConfig(**setting)
    ld = DeviceLoader(x, y, batch_size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), train=True, aug=aug,
                      seed=5, channels_last=True)
    used, changed = [], 0
    real = A.crop_flip_u8
    A.crop_flip_u8 = lambda *a: used.append(1) or real(*a)
    try:
        for epoch in (1, 2):
            ld.set_epoch(epoch)
            perm, params = ld.epoch_order()
            for (s, e), (xb, _) in zip(ld._plan(), ld):
                idx = perm[s:e]
                p = A.slice_params(params, slice(s, e))
                want = A.apply_geometric(ld.images[idx].float().mul_(ld._scale).sub_(ld._shift), p, aug)
                size = ld.epoch_image_size()
                if size != ld.image_size:
                    want = torch.nn.functional.interpolate(want, size=size, mode="bilinear", antialias=True,
                                                           align_corners=False)
                assert xb.shape == want.shape and xb.is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(xb, want)
                plain = ld.images[idx].float().mul_(ld._scale).sub_(ld._shift)
                changed += xb.shape != plain.shape or not torch.equal(xb, plain)
    finally:
        A.crop_flip_u8 = real
    assert len(used) == 2 * len(ld) and changed == 2 * len(ld)  # the fast path augmented every batch


def test_crop_flip_u8_reflects_at_both_edges_like_torch_pad():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.uint8).view(2, 1, 5, 6)
    oy, ox = torch.tensor([0, 4]), torch.tensor([4, 0])
    flip = torch.tensor([True, False])
    want = A.hflip(A.crop(x.float(), 2, oy, ox, "reflect"), flip)
    got = A.crop_flip_u8(x, 2, oy, ox, flip)
    assert got.dtype == torch.uint8 and torch.equal(got.float(), want)
    assert got[1, 0, 0, 0] == x[1, 0, 2, 2]  # offsets (4, 0) with padding 2: up-left corner reflected


def test_several_cutout_holes_of_drawn_sizes_are_drawn_per_sample_and_per_hole():
    """CoarseDropout's shape on the fast path: --cutout-holes squares per image, each side drawn
    from [--cutout-min, --cutout] per square, centres per square; the fill is the mean (0)."""
    n, k = 400, 3
    aug = A.AugmentConfig(crop_padding=0, flip="none", cutout=12, cutout_min=4, cutout_holes=k)
    g = torch.Generator().manual_seed(0)
    p = A.sample_params(n, aug, (32, 32), g)
    assert p["cut_y"].shape == p["cut_x"].shape == p["cut_size"].shape == (n, k)
    sizes = p["cut_size"].flatten()
    assert sizes.min() == 4 and sizes.max() == 12 and len(sizes.unique()) == 9  # the whole range, both ends
    assert abs(sizes.float().mean().item() - 8.0) < 0.3
    assert (p["cut_size"][:, 0] != p["cut_size"][:, 1]).float().mean() > 0.8  # per hole, not per image
    assert (p["cut_y"][:, 0] != p["cut_y"][:, 1]).float().mean() > 0.9
    x = torch.ones(n, 3, 32, 32)
    out = A.apply_geometric(x, p, aug)
    zeroed = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeroed.max() > 12 * 12 and zeroed.max() <= 3 * 12 * 12  # holes add up, never more than k squares
    one = A.cutout_mask((n, 3, 32, 32), p["cut_size"][:, :1], p["cut_y"][:, :1], p["cut_x"][:, :1],
                        torch.ones(n, dtype=torch.bool))
    assert (zeroed >= one.flatten(1).sum(1)).all()  # a second and third hole only add pixels
    assert torch.equal(out[out != 0], torch.ones_like(out[out != 0]))


def test_one_cutout_hole_of_fixed_size_draws_what_it_always_drew():
    """The default cutout's draws (and so every seeded run) do not depend on the hole options."""
    aug = A.AugmentConfig(crop_padding=0, flip="none", cutout=16)
    p = A.sample_params(50, aug, (32, 32), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    applied, ys, xs = torch.rand(50, generator=g) < 1.0, torch.randint(0, 32, (50,), generator=g), \
        torch.randint(0, 32, (50,), generator=g)
    assert torch.equal(p["cut_y"], ys) and torch.equal(p["cut_x"], xs) and "cut_size" not in p
    assert torch.equal(p["cutout"], applied)


@pytest.mark.parametrize("fill", [-1.0, 0.0, 1.0])
def test_cutout_fills_with_the_mean_or_the_grey_level_asked_for(fill):
    """--cutout-fill: -1 keeps the dataset mean (0 after normalising); a grey level v in [0, 1] becomes
    (v - mean) / std per channel, as CoarseDropout's fill=v*255 on the raw image would."""
    from eva8_utils.loader import DeviceLoader

    x = torch.full((8, 16, 16, 3), 128, dtype=torch.uint8)
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    aug = A.AugmentConfig(crop_padding=0, flip="none", cutout=6, cutout_fill=fill)
    ld = DeviceLoader(x, torch.zeros(8, dtype=torch.long), batch_size=8, mean=mean, std=std, train=True, aug=aug)
    ld.set_epoch(1)
    (xb, _), = list(ld)
    plain = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    want = torch.zeros(3) if fill < 0 else (fill - torch.tensor(mean)) / torch.tensor(std)
    for c in range(3):
        values = xb[:, c].flatten()
        filled = values[(values - plain[c]).abs() > 1e-4]
        assert len(filled) >= 8 * 9 and torch.allclose(filled, want[c].expand_as(filled), atol=1e-5)


# --------------------------------------------------------------------------- promises found by the mutation check
def _ramp(b=1, h=16, w=16):
    """Images whose pixels all differ (a ramp along rows and columns): any misplaced pixel shows."""
    return torch.arange(b * 3 * h * w, dtype=torch.float32).view(b, 3, h, w) / (h * w)


def test_rotation_by_90_degrees_is_a_quarter_turn_and_scale_zooms_in():
    x = _ramp()
    one, zero, yes = torch.ones(1), torch.zeros(1), torch.tensor([True])
    quarter = A.affine(x, yes, zero, zero, one, torch.full((1,), 90.0))
    back = A.affine(quarter, yes, zero, zero, one, torch.full((1,), -90.0))
    turns = [k for k in (1, 3) if torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-4)]
    assert len(turns) == 1                             # a rotation, not a mirror or a near-quarter turn
    assert torch.allclose(back, x, atol=1e-4)          # -90 turns it back
    # scale s: the image is magnified s times about its centre (a column ramp's slope times 1/s)
    cols = torch.arange(16, dtype=torch.float32).expand(1, 3, 16, 16).contiguous()
    zoomed = A.affine(cols, yes, zero, zero, torch.full((1,), 2.0), zero)
    slope = (zoomed[0, 0, 8, 10] - zoomed[0, 0, 8, 5]) / 5
    assert float(slope) == pytest.approx(0.5, abs=1e-4)
    # zoom and turn together: the turned zoom
    both = A.affine(x, yes, zero, zero, torch.full((1,), 2.0), torch.full((1,), 90.0))
    zoom_only = A.affine(x, yes, zero, zero, torch.full((1,), 2.0), zero)
    assert torch.allclose(both, torch.rot90(zoom_only, turns[0], dims=(2, 3)), atol=1e-4)


def test_a_vertical_shift_moves_content_down_by_its_fraction_of_the_height():
    x = _ramp(2)
    zeros, ones, mask = torch.zeros(2), torch.ones(2), torch.tensor([True, True])
    down = A.affine(x, mask, zeros, torch.full((2,), 3 / 16), ones, zeros)  # 3 pixels down
    assert torch.allclose(down[:, :, 3:, :], x[:, :, :-3, :], atol=1e-4)
    assert torch.equal(down[:, :, :3, :], torch.zeros_like(down[:, :, :3, :]))


def test_contrast_works_around_each_images_luma_and_the_result_stays_in_0_1():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 6, 6, generator=g) * torch.tensor([0.9, 0.3, 0.6]).view(1, 3, 1, 1)  # channels differ
    mask = torch.ones(3, dtype=torch.bool)
    b, c = torch.tensor([1.1, 0.9, 1.0]), torch.tensor([1.3, 0.7, 1.5])
    out = A.brightness_contrast(x, mask, b, c)
    y = x * b.view(-1, 1, 1, 1)
    luma = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    assert torch.allclose(out, ((y - luma) * c.view(-1, 1, 1, 1) + luma).clamp(0, 1), atol=1e-6)
    strong = A.brightness_contrast(x, mask, torch.full((3,), 1.8), torch.full((3,), 3.0))
    assert float(strong.min()) == 0.0 and float(strong.max()) == 1.0   # clipped at both ends, not beyond


def test_an_odd_cutout_side_covers_exactly_that_many_rows_and_columns():
    m = A.cutout_mask((1, 1, 20, 20), 5, torch.tensor([10]), torch.tensor([7]), torch.tensor([True]))[0, 0]
    rows, cols = m.any(1).nonzero().flatten().tolist(), m.any(0).nonzero().flatten().tolist()
    assert rows == [8, 9, 10, 11, 12] and cols == [5, 6, 7, 8, 9]   # [c - 5//2, c - 5//2 + 5)


def test_every_enabled_augmentation_reaches_the_images_through_the_pipeline():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 32, 32, generator=g)
    grey = A.AugmentConfig(crop_padding=0, flip="none", cutout=0, grayscale_p=1.0)
    out = A.apply_colour(x, A.sample_params(8, grey, (32, 32), g))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    turned = A.AugmentConfig(crop_padding=0, flip="none", cutout=0, affine_p=1.0)
    out = A.apply_geometric(x, A.sample_params(8, turned, (32, 32), g), turned)
    assert (out - x).abs().flatten(1).amax(1).min() > 0.05           # every image moved
    sized = A.AugmentConfig(crop_padding=0, flip="none", cutout=9, cutout_min=3)
    p = A.sample_params(8, sized, (32, 32), g)
    p["cut_y"], p["cut_x"] = torch.full((8,), 16), torch.full((8,), 16)  # centred: nothing clipped
    out = A.apply_geometric(torch.ones(8, 3, 32, 32), p, sized)
    assert (out[:, 0] == 0).sum(dim=(1, 2)).tolist() == (p["cut_size"] ** 2).tolist()


@pytest.mark.parametrize("setting, keys", [
    (dict(crop_padding=1, flip="none", cutout=0), {"crop_y", "crop_x"}),
    (dict(crop_padding=0, flip="none", cutout=1), {"cutout", "cut_y", "cut_x"}),
    (dict(crop_padding=0, flip="none", cutout=4, cutout_min=1), {"cutout", "cut_y", "cut_x", "cut_size"}),
    (dict(crop_padding=0, flip="none", cutout=0, grayscale_p=0.5), {"gray"}),
    (dict(crop_padding=0, flip="none", cutout=0), set()),
])
def test_the_smallest_setting_of_each_augmentation_enables_it_and_zero_disables_it(setting, keys):
    p = A.sample_params(64, A.AugmentConfig(**setting), (16, 16), torch.Generator().manual_seed(0))
    assert set(p) == keys
    if "crop_y" in p:
        assert set(p["crop_y"].tolist()) == {0, 1, 2}
    if "cut_size" in p:
        assert set(p["cut_size"].tolist()) == {1, 2, 3, 4}


def test_drawn_parameters_span_their_whole_ranges_and_repeat_from_the_generator_alone():
    aug = A.AugmentConfig(jitter_p=1.0, brightness=0.2, contrast=0.3, affine_p=1.0, affine_shift=0.1,
                          affine_scale=0.15, affine_rotate=10.0, cutout=8, cutout_min=2)
    p = A.sample_params(20_000, aug, (32, 32), torch.Generator().manual_seed(0))
    for key, lo, hi in (("brightness", 0.8, 1.2), ("contrast", 0.7, 1.3), ("shift_x", -0.1, 0.1),
                        ("shift_y", -0.1, 0.1), ("scale", 0.85, 1.15), ("angle", -10.0, 10.0)):
        span = hi - lo
        assert lo <= float(p[key].min()) < lo + 0.01 * span and hi - 0.01 * span < float(p[key].max()) <= hi, key
    torch.manual_seed(123)  # the global generator must play no part
    again = A.sample_params(20_000, aug, (32, 32), torch.Generator().manual_seed(0))
    assert all(torch.equal(p[k], again[k]) for k in p)


def test_an_unmixed_batch_gets_float_one_hot_targets_of_the_full_width():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])         # class 9 absent from the batch
    _, t = A.mix_batch(x, y, 10, {**_mix("mixup"), "apply": False})
    assert t.dtype == torch.float32 and t.shape == (4, 10) and torch.equal(t.argmax(1), y)


@pytest.mark.parametrize("mixup, cutmix", [(1.0, 0.0), (0.0, 1.0)])
def test_with_one_kind_of_mixing_enabled_every_batch_uses_it(mixup, cutmix):
    a = A.sample_mix_params(500, A.AugmentConfig(mixup=mixup, cutmix=cutmix), (32, 32), seed=1)
    assert a["apply"].all() and (a["cutmix"] == (cutmix > 0)).all()
    assert (a["lam"] < 1).mean() > 0.95                                  # mixed, not passed through


def test_cutmix_boxes_are_integer_clipped_centred_and_sized_by_beta():
    h = w = 32
    n = 4000
    a = A.sample_mix_params(n, A.AugmentConfig(cutmix=1.0), (h, w), seed=2)
    y0, y1, x0, x1, cy, cx = (a[k] for k in ("y0", "y1", "x0", "x1", "cy", "cx"))
    assert all(np.issubdtype(v.dtype, np.integer) for v in (y0, y1, x0, x1))
    assert (0 <= y0).all() and (y0 <= y1).all() and (y1 <= h).all() and (0 <= x0).all() and (x0 <= x1).all() \
        and (x1 <= w).all()
    assert set(cy.tolist()) == set(range(h)) and set(cx.tolist()) == set(range(w))   # every centre, nothing else
    assert (y0 == 0).any() and (y1 == h).any() and (x0 == 0).any() and (x1 == w).any()
    inside = (y0 > 0) & (y1 < h) & (x0 > 0) & (x1 < w)                  # boxes no border clipped
    assert inside.sum() > 200
    side = y1 - y0
    assert (side[inside] == (x1 - x0)[inside]).all()                    # square on a square image
    assert (y0[inside] == cy[inside] - side[inside] // 2).all() and (x0[inside] == cx[inside] - side[inside] // 2).all()
    # side = floor(h * sqrt(1 - lam)), lam ~ Beta(1, 1): (side/h)^2 about uniform on [0, 1], and the
    # unclipped ones lean small (a big box is more often clipped): about 0.17 here
    frac = (side[inside] / h) ** 2
    assert 0.1 < frac.mean() < 0.3 and len(np.unique(side[inside])) > 20


def test_the_augmentation_settings_come_from_the_training_config():
    from eva8_utils.config import TrainConfig

    cfg = TrainConfig(cutout=8, cutout_p=0.5, crop_padding=2, mixup=0.4, flip="none")
    aug = A.AugmentConfig.from_config(cfg, mix_classes=7)  # a setting the config does not hold
    assert (aug.cutout, aug.cutout_p, aug.crop_padding, aug.mixup, aug.flip, aug.mix_classes) == (8, 0.5, 2, 0.4,
                                                                                                 "none", 7)
