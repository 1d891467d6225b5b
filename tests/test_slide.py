"""Whole-slide attention: geometry, tiling independence, inputs and failure modes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import safetensors.torch
import tifffile
import torch
import torch.nn.functional as F

from napari_atagan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_atagan.gan.config import TrainConfig
from napari_atagan.gan.models import build_models
from napari_atagan.slides.attention import (
    CELL_FRACTION,
    Stopped,
    default_tile_size,
    discriminator_attention,
    estimate_cell_diameter,
    model_cell_diameter,
    slide_attention,
    slide_attention_stack,
)

MODEL_DIAMETER = 10.0  # cell diameter at model scale recorded in the test checkpoint


def _tiny_checkpoint(path, *, model_diameter: float | None = MODEL_DIAMETER):
    """A 16x16 model (D stride 4, receptive field 15) with random, O(1) weights."""
    cfg = TrainConfig(image_size=16, g_channels=(8, 4), d_channels=(8, 16, 16),
                      steps=1, batch_size=2, device="cpu")
    torch.manual_seed(0)
    gen, disc = build_models(cfg, 0)
    with torch.no_grad():
        for module in disc.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.normal_(module.weight, 0.0, 0.3)
        disc.realness.bias.fill_(-0.5)
    data = {"cell_diameter": 20.0, "image_size": 16}
    if model_diameter is not None:
        data["model_cell_diameter"] = model_diameter
    return save_checkpoint(path, config=cfg, modules={"G": gen, "D": disc},
                           metadata={"data": data, "intensity": {"lo": 0, "hi": 255}})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return load_checkpoint(_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="module")
def ckpt_path(ckpt):
    return ckpt.path


def _slide(shape=(120, 136), seed=0, dtype=np.uint16) -> np.ndarray:
    """Bright blobs on a dim noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(100, 10, shape)
    for _ in range(max(1, shape[0] * shape[1] // 900)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        img += 400 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
    if np.dtype(dtype).kind in "ui":
        return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)
    return img.astype(dtype)


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------
# geometry and tiling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_shape_and_dtype(ckpt, dtype):
    img = _slide(dtype=dtype)
    att = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert att.shape == img.shape and att.dtype == np.float32
    assert np.isfinite(att).all() and att.std() > 0


@pytest.mark.parametrize("diameter", [4.0, 7.3, 10.0, 13.7, 25.0])
def test_rescaling_round_trip_keeps_shape(ckpt, diameter):
    img = _slide((97, 131))
    att = slide_attention(ckpt, img, cell_diameter=diameter, device="cpu")
    assert att.shape == img.shape and np.isfinite(att).all()


@pytest.mark.parametrize("diameter", [10.0, 6.0, 17.0])
def test_tiled_equals_untiled(ckpt, diameter):
    img = _slide((150, 170))
    whole = slide_attention(ckpt, img, cell_diameter=diameter, tile_size=10**6, device="cpu")
    tiled = slide_attention(ckpt, img, cell_diameter=diameter, tile_size=16, device="cpu")
    assert _rel(tiled, whole) < 1e-4


def test_matches_direct_formula_at_model_scale(ckpt):
    """Factor 1 on a stride-aligned slide: the tiled engine equals the textbook formula."""
    img = _slide((96, 112)).astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.8])
    att = slide_attention(ckpt, img, cell_diameter=MODEL_DIAMETER, tile_size=16,
                          device="cpu", intensity=(lo, hi))
    disc = ckpt.discriminator("cpu")
    x = torch.from_numpy(np.clip((img - lo) * 2 / (hi - lo) - 1, -1, 1).astype(np.float32))
    x = x[None, None]
    with torch.no_grad():
        a = disc.features(x)
        cam = disc.cam_map(a)[:, None]
        logit = cam + disc.realness.bias
        k = disc.image_size // disc.stride
        pooled = F.avg_pool2d(logit, k, stride=1, padding=k // 2, count_include_pad=False)
        soft = (torch.sigmoid(pooled[..., : cam.shape[-2], : cam.shape[-1]]) * cam).clamp_min(0)
        ref = F.interpolate(soft, size=img.shape, mode="bilinear", align_corners=False)[0, 0]
    assert _rel(att, ref.numpy()) < 1e-4


@pytest.mark.parametrize("diameter", [5.0, 20.0])
def test_rescaled_slide_matches_torch_interpolation(ckpt, diameter):
    """Factor 2 (bilinear) and 0.5 (anti-aliased): same as torch's own resampling.

    Torch renormalises its anti-aliasing kernel at the image edge where the
    engine repeats edge pixels, so for shrinking only the interior is compared.
    """
    img = _slide((96, 112) if diameter < MODEL_DIAMETER else (256, 288)).astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.8])
    att = slide_attention(ckpt, img, cell_diameter=diameter, tile_size=32, device="cpu",
                          intensity=(lo, hi))
    disc = ckpt.discriminator("cpu")
    factor = MODEL_DIAMETER / diameter
    size = (round(img.shape[0] * factor), round(img.shape[1] * factor))
    x = torch.from_numpy(((img - lo) * 2 / (hi - lo) - 1).astype(np.float32))[None, None]
    with torch.no_grad():
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                          antialias=factor < 1).clamp(-1, 1)
        cam = disc.cam_map(disc.features(x))[:, None]
        k = disc.image_size // disc.stride
        pooled = F.avg_pool2d(cam + disc.realness.bias, k, stride=1, padding=k // 2,
                              count_include_pad=False)
        soft = (torch.sigmoid(pooled[..., : cam.shape[-2], : cam.shape[-1]]) * cam).clamp_min(0)
        ref = F.interpolate(soft, size=img.shape, mode="bilinear", align_corners=False,
                            antialias=factor > disc.stride)[0, 0].numpy()
    m = 0 if factor > 1 else 64  # what the edge difference can reach, in source pixels
    inner = (slice(m, img.shape[0] - m), slice(m, img.shape[1] - m))
    assert _rel(att[inner], ref[inner]) < 1e-4


@pytest.mark.parametrize("channels, image_size, spectral", [
    ((8, 8, 8, 16), 24, False),  # stride 8, odd window of 3 cells
    ((8, 16), 16, True),  # stride 2, window of 8 cells, spectral normalisation
])
@pytest.mark.parametrize("dense", [False, True])
def test_other_geometries_tiled_equals_formula(channels, image_size, spectral, dense):
    from napari_atagan.gan.models import Discriminator

    torch.manual_seed(1)
    disc = Discriminator(channels=channels, image_size=image_size, spectral_norm=spectral).eval()
    s = disc.stride
    img = _slide((12 * s, 14 * s)).astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.8])
    # the map at the discriminator's own stride, or the default finer one computed by the
    # same formula from the dense discriminator
    cam_stride = None if dense else s
    att = discriminator_attention(disc, img, factor=1.0, tile_size=2 * s, device="cpu",
                                  intensity=(lo, hi), cam_stride=cam_stride)
    if dense:
        from napari_atagan.slides.attention import _at_stride

        disc = _at_stride(disc, None)
        s = disc.stride
    x = torch.from_numpy(np.clip((img - lo) * 2 / (hi - lo) - 1, -1, 1).astype(np.float32))
    with torch.no_grad():
        cam = disc.cam_map(disc.features(x[None, None]))[:, None]
        k = image_size // s
        pooled = F.avg_pool2d(cam + disc.realness_weight()[1], k, stride=1, padding=k // 2,
                              count_include_pad=False)
        soft = (torch.sigmoid(pooled[..., : cam.shape[-2], : cam.shape[-1]]) * cam).clamp_min(0)
        ref = F.interpolate(soft, size=img.shape, mode="bilinear", align_corners=False)[0, 0]
    assert _rel(att, ref.numpy()) < 1e-4


@pytest.mark.parametrize("diameter, origin", [(10.0, (32, 48)), (20.0, (24, 40))])
def test_crop_equals_region_of_whole_slide(ckpt, diameter, origin):
    """Away from the crop's borders, a crop's map is the slide's map there.

    The crop origin maps to a multiple of the stride at model scale, so both
    share one feature grid.
    """
    img = _slide((200, 232), seed=3)
    levels = tuple(np.percentile(img, [0.5, 99.8]))
    whole = slide_attention(ckpt, img, cell_diameter=diameter, device="cpu", intensity=levels)
    y0, x0 = origin
    crop = img[y0:y0 + 160, x0:x0 + 176]
    part = slide_attention(ckpt, crop, cell_diameter=diameter, device="cpu", intensity=levels)
    # what the crop's edge can disturb: half a receptive field, half a window and one
    # interpolation step, about 6 feature cells of 4 model pixels
    m = int(6 * 4 * diameter / MODEL_DIAMETER)
    inner = part[m:-m, m:-m]
    ref = whole[y0 + m:y0 + 160 - m, x0 + m:x0 + 176 - m]
    assert inner.size > 0
    assert _rel(inner, ref) < 1e-4


def test_background_is_weaker_than_cells(ckpt):
    """Sanity: the map is not constant and depends on the content."""
    img = _slide((128, 128))
    att = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    flat = slide_attention(ckpt, np.full_like(img, 100) + (np.arange(128) % 2).astype(img.dtype),
                           cell_diameter=10, device="cpu")
    assert not np.allclose(att, flat)


def test_default_tile_size_is_larger_on_cuda():
    assert default_tile_size("cpu") == 1024
    assert default_tile_size(torch.device("cuda")) == 2048  # no GPU needed to ask


def test_model_cell_diameter(ckpt, tmp_path):
    assert model_cell_diameter(ckpt) == MODEL_DIAMETER
    old = load_checkpoint(_tiny_checkpoint(tmp_path / "old", model_diameter=None))
    assert model_cell_diameter(old) == pytest.approx(CELL_FRACTION * 16)


def test_accepts_path(ckpt_path):
    att = slide_attention(str(ckpt_path), _slide((64, 64)), cell_diameter=10, device="cpu")
    assert att.shape == (64, 64)


# ---------------------------------------------------------------------------
# big and lazy inputs
# ---------------------------------------------------------------------------


class _LazySlide:
    """An array-like that only hands out regions and records the largest tile read.

    Strided reads (the intensity sub-sample) are not counted as tiles.
    """

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.largest = 0

    def __getitem__(self, key):
        region = self._data[key]
        if all(k.step is None for k in key):
            self.largest = max(self.largest, region.size)
        return region

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole slide must never be materialised")


def test_lazy_array_is_read_region_by_region(ckpt):
    img = _slide((256, 256))
    lazy = _LazySlide(img)
    att = slide_attention(ckpt, lazy, cell_diameter=10, tile_size=32, device="cpu")
    assert lazy.largest < img.size / 2
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert _rel(att, ref) < 1e-4


class _NoStepSlide(_LazySlide):
    """An array-like whose slicing supports no steps (like some file readers)."""

    def __getitem__(self, key):
        if any(k.step not in (None, 1) for k in key):
            raise TypeError("steps are not supported")
        return super().__getitem__(key)


def test_array_like_without_step_slicing(ckpt, monkeypatch):
    import napari_atagan.data as data_module

    monkeypatch.setattr(data_module, "SLIDE_SAMPLE_PIXELS", 1000)  # sample every 4th pixel
    img = _slide((96, 96))
    att = slide_attention(ckpt, _NoStepSlide(img), cell_diameter=10, device="cpu")
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert _rel(att, ref) < 1e-5


def test_tiff_memmap_in_and_memmap_out(ckpt, tmp_path):
    img = _slide((160, 176))
    tifffile.imwrite(tmp_path / "slide.tif", img)
    src = tifffile.memmap(tmp_path / "slide.tif", mode="r")
    out = np.lib.format.open_memmap(tmp_path / "att.npy", mode="w+", dtype=np.float32,
                                    shape=img.shape)
    res = slide_attention(ckpt, src, cell_diameter=10, tile_size=32, device="cpu", out=out)
    assert res is out
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert _rel(np.asarray(out), ref) < 1e-4


@pytest.mark.parametrize("kind", ["float32", "float64", "memmap", "reversed"])
def test_map_written_in_many_bands_into_any_out(ckpt, tmp_path, monkeypatch, kind):
    import napari_atagan.slides.attention as slide_mod

    img = _slide((150, 96))
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    monkeypatch.setattr(slide_mod, "_OUT_BAND_PIXELS", 96 * 7)  # 22 bands, the last short
    if kind == "memmap":
        out = np.lib.format.open_memmap(tmp_path / "att.npy", mode="w+", dtype=np.float32,
                                        shape=img.shape)
    elif kind == "reversed":  # negative strides, which torch cannot view
        out = np.full(img.shape, -1.0, dtype=np.float32)[::-1]
    else:
        out = np.full(img.shape, -1.0, dtype=kind)
    res = slide_attention(ckpt, img, cell_diameter=10, device="cpu", out=out)
    assert res is out
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-6)


def test_host_buffers_take_turns_and_grow_when_needed():
    from napari_atagan.slides.attention import _HostBuffers

    buffers = _HostBuffers(torch.device("cpu"))
    (i, a), (j, b) = buffers.take(10), buffers.take(20)
    assert (i, j) == (0, 1) and a.numel() == 10 and b.numel() == 20
    k, c = buffers.take(8)  # the first buffer again, big enough already
    assert k == 0 and c.numel() == 8 and c.data_ptr() == a.data_ptr()
    k, d = buffers.take(40)  # the second, too small: a larger one
    assert k == 1 and d.numel() == 40 and d.dtype == torch.uint8


def test_map_in_ordinary_memory_when_no_page_locked_memory_is_had(monkeypatch):
    import napari_atagan.slides.attention as slide_mod

    def refuse(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(slide_mod.torch, "empty", refuse)
    out = slide_mod._output(None, (6, 7), torch.device("cuda"))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (6, 7)
    assert not out.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("kind", ["own", "float32", "float64", "memmap", "stack"])
def test_cuda_map_equals_the_cpu_map_for_every_kind_of_out(ckpt, tmp_path, monkeypatch, kind):
    """Maps allocated here are page-locked; other outs get their bands through buffers."""
    import napari_atagan.slides.attention as slide_mod

    img = _slide((150, 96))
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    monkeypatch.setattr(slide_mod, "_OUT_BAND_PIXELS", 96 * 7)  # 22 bands, the last short
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 like the CPU
    if kind == "stack":
        res = slide_attention_stack(ckpt, np.stack([img, img]), cell_diameter=10,
                                    device="cuda")
        assert torch.from_numpy(res).is_pinned()
        for plane in res:
            np.testing.assert_allclose(plane, ref, rtol=0, atol=1e-4)
        return
    out = {"own": None,
           "float32": np.full(img.shape, -1.0, dtype=np.float32),
           "float64": np.full(img.shape, -1.0),
           "memmap": np.lib.format.open_memmap(tmp_path / "att.npy", mode="w+",
                                               dtype=np.float32, shape=img.shape)}[kind]
    res = slide_attention(ckpt, img, cell_diameter=10, device="cuda", out=out)
    assert res.dtype == (np.float64 if kind == "float64" else np.float32)
    if kind == "own":
        assert torch.from_numpy(res).is_pinned()
    else:
        assert res is out
    np.testing.assert_allclose(np.asarray(res), ref, rtol=0, atol=1e-4)


def test_dask_array(ckpt):
    da = pytest.importorskip("dask.array")
    img = _slide((128, 144))
    att = slide_attention(ckpt, da.from_array(img, chunks=64), cell_diameter=10, device="cpu")
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert _rel(att, ref) < 1e-4


def test_float64_out(ckpt):
    img = _slide((64, 80))
    out = np.full(img.shape, -1.0)
    res = slide_attention(ckpt, img, cell_diameter=10, device="cpu", out=out)
    assert res is out
    ref = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    np.testing.assert_array_equal(out, ref.astype(np.float64))


def _in_dtype_range(dtype) -> np.ndarray:
    """A test slide spread over much of ``dtype``'s range (up to +-2**40 for integers).

    uint16 and uint32 pixels then reach above 2**15 and 2**31: they travel to the
    device as the bits of int16 / int32, negative there, and must come back unsigned.
    """
    dtype = np.dtype(dtype)
    base = _slide((96, 112), dtype=np.float64)
    t = (base - base.min()) / (base.max() - base.min())
    if dtype.kind in "ui":
        lo, hi = max(int(np.iinfo(dtype).min), -2**40), min(int(np.iinfo(dtype).max), 2**40)
        return np.round(lo + t * (hi - lo)).astype(dtype)
    return (t * 1000 - 200).astype(dtype)


@pytest.mark.parametrize("diameter", [10.0, 7.3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.float16, np.float64, ">u2", ">f4"])
def test_stored_dtypes_give_the_map_of_the_float32_slide(ckpt, dtype, diameter):
    """Regions go to the device as stored and become float32 there: same map as float32."""
    img = _in_dtype_range(dtype)
    as_float = img.astype(np.float32)
    levels = tuple(float(v) for v in np.percentile(as_float, [0.5, 99.8]))
    att = slide_attention(ckpt, img, cell_diameter=diameter, tile_size=32, device="cpu",
                          intensity=levels)
    ref = slide_attention(ckpt, as_float, cell_diameter=diameter, tile_size=32, device="cpu",
                          intensity=levels)
    assert ref.max() > 0
    np.testing.assert_array_equal(att, ref)


def test_out_of_wrong_shape(ckpt):
    with pytest.raises(ValueError, match="out has shape"):
        slide_attention(ckpt, _slide((64, 64)), cell_diameter=10, device="cpu",
                        out=np.zeros((10, 10), np.float32))


# ---------------------------------------------------------------------------
# stacks, colour, progress and stop
# ---------------------------------------------------------------------------


def test_stack_plane_by_plane_with_one_progress_total(ckpt):
    stack = np.stack([_slide((80, 96), seed=s) for s in range(3)])
    calls = []
    att = slide_attention_stack(ckpt, stack, cell_diameter=10, tile_size=32, device="cpu",
                                progress=lambda d, t: calls.append((d, t)))
    assert att.shape == stack.shape and att.dtype == np.float32
    for t in range(3):
        ref = slide_attention(ckpt, stack[t], cell_diameter=10, device="cpu")
        assert _rel(att[t], ref) < 1e-4
    totals = {t for _, t in calls}
    assert len(totals) == 1
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == totals.pop()


def test_stack_refuses_2d_and_slide_refuses_3d(ckpt):
    with pytest.raises(ValueError, match="3-D"):
        slide_attention_stack(ckpt, _slide((64, 64)), cell_diameter=10, device="cpu")
    with pytest.raises(ValueError, match="slide_attention_stack"):
        slide_attention(ckpt, np.zeros((2, 64, 64)), cell_diameter=10, device="cpu")


def test_colour_stack_with_grey(ckpt):
    stack = np.stack([_slide((64, 72), seed=s, dtype=np.uint8) for s in range(2)])
    rgb = np.stack([stack] * 3, axis=-1)
    att = slide_attention_stack(ckpt, rgb, cell_diameter=10, device="cpu", rgb="grey")
    ref = slide_attention_stack(ckpt, stack, cell_diameter=10, device="cpu")
    assert att.shape == stack.shape and _rel(att, ref) < 1e-3
    with pytest.raises(ValueError, match="rgb='grey'"):
        slide_attention_stack(ckpt, rgb, cell_diameter=10, device="cpu")


def test_stack_refuses_a_colour_image(ckpt):
    with pytest.raises(ValueError, match="colour"):
        slide_attention_stack(ckpt, np.zeros((64, 64, 3)), cell_diameter=10, device="cpu")


def test_rgb_refused_unless_grey(ckpt):
    grey = _slide((64, 80), dtype=np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    with pytest.raises(ValueError, match="rgb='grey'"):
        slide_attention(ckpt, rgb, cell_diameter=10, device="cpu")
    att = slide_attention(ckpt, rgb, cell_diameter=10, device="cpu", rgb="grey")
    ref = slide_attention(ckpt, grey, cell_diameter=10, device="cpu")
    assert _rel(att, ref) < 1e-3
    rgba = np.concatenate([rgb, np.full_like(grey, 255)[..., None]], axis=-1)
    assert slide_attention(ckpt, rgba, cell_diameter=10, device="cpu", rgb="grey").shape == (64, 80)


def test_four_d_refused(ckpt):
    with pytest.raises(ValueError, match="2-D"):
        slide_attention(ckpt, np.zeros((2, 2, 64, 64)), cell_diameter=10, device="cpu")


def test_progress_reaches_total(ckpt):
    calls = []
    slide_attention(ckpt, _slide((96, 96)), cell_diameter=10, tile_size=32, device="cpu",
                    progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 2 and calls[-1][0] == calls[-1][1]


def test_stop_raises_quickly(ckpt):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Stopped):
        slide_attention(ckpt, _slide((128, 128)), cell_diameter=10, tile_size=16,
                        device="cpu", stop=stop)
    assert len(calls) == 3


def test_discriminator_attention_on_bare_model(ckpt):
    disc = ckpt.discriminator("cpu")
    img = _slide((64, 72))
    att = discriminator_attention(disc, img, factor=1.0, device="cpu")
    ref = slide_attention(ckpt, img, cell_diameter=MODEL_DIAMETER, device="cpu")
    assert _rel(att, ref) < 1e-5


def test_discriminator_prepared_once_per_checkpoint_and_stride(tmp_path, monkeypatch):
    """An archive's worker runs many slides with one checkpoint: the discriminator is
    built for slides once (per device and CAM stride), and the maps stay those of a
    freshly built one."""
    ckpt = load_checkpoint(_tiny_checkpoint(tmp_path / "tiny"))
    built = []
    original = type(ckpt).discriminator

    def counting(self, device="cpu"):
        built.append(str(device))
        return original(self, device)

    monkeypatch.setattr(type(ckpt), "discriminator", counting)
    maps = [slide_attention(ckpt, _slide((64, 72), seed=s), cell_diameter=MODEL_DIAMETER,
                            device="cpu") for s in range(3)]
    assert built == ["cpu"]
    slide_attention_stack(ckpt, np.stack([_slide((64, 72), seed=s) for s in range(2)]),
                          cell_diameter=MODEL_DIAMETER, device="cpu")
    assert built == ["cpu"]  # a stack uses the same prepared discriminator
    slide_attention(ckpt, _slide((64, 72)), cell_diameter=MODEL_DIAMETER, device="cpu",
                    cam_stride=2)
    assert built == ["cpu", "cpu"]  # another stride is another discriminator
    for s, m in enumerate(maps):
        fresh = discriminator_attention(original(ckpt, "cpu"), _slide((64, 72), seed=s),
                                        factor=1.0, device="cpu")
        assert np.array_equal(m, fresh)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_constant_image_gives_zeros(ckpt, value):
    img = np.full((64, 80), value, dtype=np.uint16)
    att = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert att.shape == img.shape and not att.any()


def test_sparse_slide_still_gets_a_map(ckpt):
    """A few bright pixels below the high percentile must not count as 'constant'."""
    img = np.zeros((128, 128), np.uint16)
    img[60:63, 60:63] = 1000
    att = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    assert np.isfinite(att).all() and att.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_refused(ckpt, bad):
    img = _slide((64, 64), dtype=np.float32)
    img[10, 20] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        slide_attention(ckpt, img, cell_diameter=10, device="cpu")


def test_non_finite_pixel_outside_sample_refused(ckpt):
    """A NaN that the percentile sub-sample misses is caught when its tile is read."""
    img = _slide((64, 64), dtype=np.float32)
    img[11, 21] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        slide_attention(ckpt, img, cell_diameter=10, device="cpu", intensity=(0.0, 500.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixel_in_a_later_tile_is_located_and_out_untouched(ckpt, dtype, bad):
    """The error names rows and columns around the bad pixel; nothing is written before."""
    img = _slide((96, 112), dtype=dtype)
    img[80, 70] = bad
    out = np.full(img.shape, -7.0, np.float32)
    with pytest.raises(ValueError, match="NaN or infinite") as info:
        slide_attention(ckpt, img, cell_diameter=10, tile_size=16, device="cpu",
                        intensity=(0.0, 500.0), out=out)
    r0, r1, c0, c1 = map(int, re.search(r"rows (\d+)-(\d+), columns (\d+)-(\d+)",
                                        str(info.value)).groups())
    assert r0 <= 80 < r1 and c0 <= 70 < c1 and r0 > 0
    assert (out == -7.0).all()


@pytest.mark.parametrize("diameter", [0, -3, float("nan"), float("inf"), "big"])
def test_bad_diameter(ckpt, diameter):
    with pytest.raises(ValueError, match="cell_diameter"):
        slide_attention(ckpt, _slide((64, 64)), cell_diameter=diameter, device="cpu")


def test_diameter_too_large_for_image(ckpt):
    with pytest.raises(ValueError, match="smaller than one training crop"):
        slide_attention(ckpt, _slide((64, 64)), cell_diameter=60, device="cpu")


def test_image_too_small_even_enlarged(ckpt):
    """A tiny image is the problem, not the diameter: the message says so."""
    with pytest.raises(ValueError, match=r"the 8 x 9 slide is too small: even enlarged 1\.2 "
                                         r"times .* smaller than one training crop") as err:
        slide_attention(ckpt, _slide((8, 9)), cell_diameter=MODEL_DIAMETER / 1.25, device="cpu")
    assert "diameter" not in str(err.value)


def test_diameter_absurdly_small(ckpt):
    with pytest.raises(ValueError, match="too small"):
        slide_attention(ckpt, np.broadcast_to(np.uint8(0), (2000, 2000)), cell_diameter=0.01,
                        device="cpu")


@pytest.mark.parametrize("shape", [(1, 500), (500, 1), (0, 100)])
def test_one_pixel_wide_or_empty_image(ckpt, shape):
    with pytest.raises(ValueError, match="at least 2 pixels"):
        slide_attention(ckpt, np.zeros(shape, np.uint8), cell_diameter=10, device="cpu")


def test_non_numeric_image(ckpt):
    with pytest.raises(ValueError, match="numeric"):
        slide_attention(ckpt, np.array([["a"] * 64] * 64), cell_diameter=10, device="cpu")


def test_checkpoint_of_another_format_version(tmp_path):
    path = tmp_path / "future.safetensors"
    doc = {"format_version": 99, "config": TrainConfig().to_dict()}
    safetensors.torch.save_file({"D.x": torch.zeros(1)}, str(path),
                                metadata={"napari_atagan": json.dumps(doc)})
    with pytest.raises(CheckpointError, match="future.safetensors"):
        slide_attention(path, _slide((64, 64)), cell_diameter=10, device="cpu")


# ---------------------------------------------------------------------------
# cell diameter estimate
# ---------------------------------------------------------------------------


def test_estimate_cell_diameter_on_discs():
    rng = np.random.default_rng(1)
    img = rng.normal(50, 5, (300, 300))
    yy, xx = np.mgrid[:300, :300]
    for cy in range(30, 300, 60):
        for cx in range(30, 300, 60):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] += 200  # diameter ~24-25
    assert estimate_cell_diameter(img.astype(np.uint16)) == pytest.approx(24.5, rel=0.15)


def test_estimate_cell_diameter_on_large_speckled_cells():
    """Bright speckles inside big cells must not be taken for the cells."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:480, :480]
    img = rng.normal(50, 5, yy.shape)
    for cy in range(60, 480, 120):
        for cx in range(60, 480, 120):
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= 30**2  # diameter ~60
            img[inside] += 80
            spots = ndi.binary_dilation(inside & (rng.random(yy.shape) < 0.003), iterations=2)
            img[spots & inside] += 2000  # 25 times brighter than the cell
    assert estimate_cell_diameter(img) == pytest.approx(60, rel=0.2)


def test_estimate_cell_diameter_on_a_sparse_slide():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:600, :600]
    img = rng.normal(50, 5, yy.shape)
    for cy, cx in ((150, 200), (420, 380), (300, 90)):  # 0.3 % of the area
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 15**2] += 100
    assert estimate_cell_diameter(img) == pytest.approx(30, rel=0.2)


def test_estimate_cell_diameter_refuses_constant():
    with pytest.raises(ValueError, match="constant"):
        estimate_cell_diameter(np.zeros((64, 64)))


@pytest.mark.parametrize(
    ("diameter", "shape", "n_cells", "seed"),
    [(20, (256, 256), 40, 0), (30, (256, 256), 20, 0), (40, (384, 384), 25, 0),
     (80, (640, 640), 20, 2)],
)
def test_estimate_cell_diameter_on_simulated_slides(diameter, shape, n_cells, seed):
    """Textured, touching, dim and bright simulated nuclei: within 20 % of the truth."""
    from napari_atagan.simulate import simulate_slide

    slide = simulate_slide(shape, n_cells=n_cells, cell_diameter=diameter, seed=seed)
    assert estimate_cell_diameter(slide.image) == pytest.approx(
        _median_label_diameter(slide.labels), rel=0.2)


def test_estimate_cell_diameter_on_the_sample_slide():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "sample_data"
    image = tifffile.imread(folder / "hep2_slide.tif")
    truth = _median_label_diameter(tifffile.imread(folder / "hep2_slide_labels.tif"))
    assert truth == pytest.approx(40.5, abs=0.5)
    assert estimate_cell_diameter(image) == pytest.approx(truth, rel=0.2)


def _median_label_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the labelled objects (the truth to compare with)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4.0 * areas / np.pi)))


def test_slide_attention_is_never_negative(ckpt):
    """The soft-CAM's negative part ("not a cell") is shown as 0, tiled or not."""
    img = _slide((120, 136), seed=3)
    whole = slide_attention(ckpt, img, cell_diameter=10, device="cpu")
    tiled = slide_attention(ckpt, img, cell_diameter=10, tile_size=16, device="cpu")
    assert whole.min() >= 0.0 and tiled.min() >= 0.0
    assert np.allclose(whole, tiled, atol=1e-5 * float(whole.max()))


def test_default_levels_are_a_typical_cells_and_a_few_saturated_cells_do_not_move_the_map(ckpt):
    from napari_atagan.data import cell_levels, slide_levels

    img = _slide((160, 176), seed=5).astype(np.float32)
    default = slide_attention(ckpt, img, cell_diameter=12.0, device="cpu")
    np.testing.assert_array_equal(
        default, slide_attention(ckpt, img, cell_diameter=12.0, device="cpu",
                                 intensity=cell_levels(img)))
    np.testing.assert_array_equal(
        slide_attention(ckpt, img, cell_diameter=12.0, device="cpu", intensity="percentiles"),
        slide_attention(ckpt, img, cell_diameter=12.0, device="cpu",
                        intensity=slide_levels(img)))
    # three saturated blobs in one corner: the rest of the map hardly changes
    bright = img.copy()
    yy, xx = np.mgrid[:160, :176]
    for cy, cx in ((10, 10), (10, 30), (30, 10)):
        bright[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 20 * img.max()
    rest = (slice(60, None), slice(60, None))
    robust = slide_attention(ckpt, bright, cell_diameter=12.0, device="cpu")
    plain = slide_attention(ckpt, bright, cell_diameter=12.0, device="cpu",
                            intensity="percentiles")
    assert _rel(robust[rest], default[rest]) < 0.05 < _rel(plain[rest], default[rest])
    with pytest.raises(ValueError, match="intensity must be"):
        slide_attention(ckpt, img, cell_diameter=12.0, device="cpu", intensity="brightest")


def test_cpu_layout_gives_the_same_map_and_leaves_the_callers_module(monkeypatch):
    """On a CPU the map comes from a channels-last copy of the discriminator: the same
    map as the plain layout, and the module the caller passed is not changed."""
    from napari_atagan.gan.models import Discriminator
    from napari_atagan.slides import attention as slide_module

    torch.manual_seed(2)
    disc = Discriminator(channels=(8, 16, 16), image_size=16).eval()
    img = _slide((96, 120)).astype(np.float32)
    levels = tuple(np.percentile(img, [0.5, 99.8]))
    fast = discriminator_attention(disc, img, device="cpu", intensity=levels)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous() for m in convs)  # the caller's layout, untouched
    copy = slide_module._cpu_layout(disc, torch.device("cpu"))
    assert copy is not disc
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in copy.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    monkeypatch.setattr(slide_module, "_cpu_layout", lambda d, dev: d)
    plain = discriminator_attention(disc, img, device="cpu", intensity=levels)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
