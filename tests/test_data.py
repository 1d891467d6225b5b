"""Tests of reading, centring, normalising and rendering cell crops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_atagan.data import (
    CellData,
    from_arrays,
    load_folder,
    normalise_slide,
    prepare_crop,
    render,
)

REAL = Path("/work/shared/data/i3a-task1")


# --------------------------------------------------------------------------
# Synthetic cells
# --------------------------------------------------------------------------
def make_cell(
    h: int = 60,
    w: int = 60,
    centre: tuple[float, float] | None = None,
    radius: float = 14,
    background: float = 20,
    signal: float = 60,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A dim disc on a noisy background (uint8) and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = background + signal * mask + rng.normal(0, 2, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


def centre_of_mass(x: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]]
    w = x.astype(float)
    return np.array([(yy * w).sum(), (xx * w).sum()]) / w.sum()


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cells"
    for k, name in enumerate(["Golgi", "Centromere"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            img, mask = make_cell(56 + 4 * i, 60, seed=10 * k + i)
            write_png(root / name / f"{i + 1:05d}.png", img)
            write_png(root / name / f"{i + 1:05d}_Mask.png", mask)
    return root


# --------------------------------------------------------------------------
# load_folder
# --------------------------------------------------------------------------
def test_load_folder_with_classes(class_folder: Path) -> None:
    data = load_folder(class_folder, image_size=32)
    assert isinstance(data, CellData)
    assert data.n == 6 and data.image_size == 32
    assert data.class_names == ["Centromere", "Golgi"]  # sorted
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert Path(data.files[0]).parent.name == "Centromere"
    assert data.images.dtype == np.float32 and data.images.shape == (6, 32, 32)
    assert data.masks.dtype == np.uint8 and set(np.unique(data.masks)) <= {0, 1}
    assert data.has_masks and data.has_labels
    assert data.images.min() >= -1 and data.images.max() <= 1
    # equivalent diameter of a radius-14 disc, in source pixels
    assert data.cell_diameter == pytest.approx(28, abs=1.5)
    assert data.model_cell_diameter == pytest.approx(28 * 32 / 60, abs=1.5)
    json.dumps(data.intensity)  # JSON-able
    assert data.intensity["dtype"] == "uint8"


def test_load_flat_folder_without_masks(tmp_path: Path) -> None:
    for i in range(4):
        img, _ = make_cell(50, 50, seed=i)
        write_png(tmp_path / f"cell_{i}.png", img)
    data = load_folder(tmp_path, image_size=32)
    assert data.n == 4
    assert data.labels is None and data.class_names == [] and not data.has_labels
    assert data.masks is None and not data.has_masks
    assert data.cell_diameter == pytest.approx(0.7 * 50)


def test_natural_file_order(tmp_path: Path) -> None:
    for name in ["10.png", "9.png", "100.png"]:
        write_png(tmp_path / name, make_cell(40, 40)[0])
    data = load_folder(tmp_path, image_size=16)
    assert [Path(f).name for f in data.files] == ["9.png", "10.png", "100.png"]


def test_16bit_tiff_and_render_dtype(tmp_path: Path) -> None:
    for i in range(3):
        img, mask = make_cell(48, 52, seed=i)
        tifffile.imwrite(tmp_path / f"{i}.tif", img.astype(np.uint16) * 200)
        tifffile.imwrite(tmp_path / f"{i}_mask.tif", mask)
    data = load_folder(tmp_path, image_size=32)
    assert data.n == 3 and data.has_masks
    assert data.intensity["dtype"] == "uint16"
    out = render(data.images, data.intensity)
    assert out.dtype == np.uint16 and out.shape == data.images.shape
    assert out.max() > 255  # kept the 16-bit range


def test_16bit_png(tmp_path: Path) -> None:
    img, _ = make_cell(40, 40)
    Image.fromarray(img.astype(np.uint16) * 250).save(tmp_path / "a.png")
    data = load_folder(tmp_path, image_size=16)
    assert data.intensity["dtype"] == "uint16"


def test_rgb_is_converted_with_a_warning(tmp_path: Path) -> None:
    img, _ = make_cell(40, 40)
    write_png(tmp_path / "grey.png", img)
    write_png(tmp_path / "colour.png", np.stack([img] * 3, axis=-1))
    with pytest.warns(UserWarning, match="converted to grey"):
        data = load_folder(tmp_path, image_size=16)
    assert data.n == 2
    np.testing.assert_allclose(data.images[0], data.images[1], atol=1e-2)


def test_varying_sizes_are_centred_on_the_cell() -> None:
    # cells off the crop centre, in crops of different shapes
    crops, masks = [], []
    for i, (h, w, c) in enumerate([(50, 80, (25, 20)), (90, 40, (60, 19.5)), (64, 64, (40, 40))]):
        img, mask = make_cell(h, w, centre=c, radius=10, seed=i)
        crops.append(img)
        masks.append(mask)
    data = from_arrays(crops, masks, image_size=32)
    assert data.images.shape == (3, 32, 32)
    for k in range(3):
        com = centre_of_mass(data.masks[k])
        np.testing.assert_allclose(com, [15.5, 15.5], atol=1.0)
        bright = data.images[k] > 0
        np.testing.assert_allclose(centre_of_mass(bright), [15.5, 15.5], atol=1.0)


def test_padding_uses_background_level() -> None:
    img, mask = make_cell(40, 80, radius=12)
    data = from_arrays([img], [mask], image_size=32)
    x = data.images[0]
    # the padded rows (top and bottom) look like the crop's background
    assert abs(float(np.median(x[:3])) - float(np.median(x[14:18, :3]))) < 0.15
    assert x[:3].max() < -0.5


def test_normalisation_range() -> None:
    img, mask = make_cell(64, 64, background=10, signal=40)
    data = from_arrays([img, img.astype(np.float32) * 3 + 100], [mask, mask], image_size=64)
    x = data.images
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() < -0.95 and x.max() > 0.95  # uses the full range
    # per-cell normalisation ignores gain and offset
    np.testing.assert_allclose(x[0], x[1], atol=0.03)
    assert data.intensity["dtype"] == "float32"


def test_render_round_trip() -> None:
    cells = [make_cell(60, 60, background=15 + i, signal=30 + 5 * i, seed=i) for i in range(8)]
    data = from_arrays([c[0] for c in cells], [c[1] for c in cells], image_size=32)
    out = render(data.images, data.intensity)
    assert out.dtype == np.uint8 and out.shape == data.images.shape
    # dim like the sources: background near ~15-25, cell near ~45-90
    src = np.stack([c[0] for c in cells])
    assert abs(np.median(out) - np.median(src)) < 8
    assert 35 < out.max() <= 110
    seeded = render(data.images, data.intensity, seed=1)
    assert seeded.dtype == np.uint8
    np.testing.assert_array_equal(seeded, render(data.images, data.intensity, seed=1))
    # a single image and a torch tensor work too
    import torch

    one = render(torch.from_numpy(data.images[0]), data.intensity)
    assert one.shape == (32, 32) and one.dtype == np.uint8


def test_subset() -> None:
    cells = [make_cell(40, 40, seed=i) for i in range(5)]
    data = from_arrays(
        [c[0] for c in cells], [c[1] for c in cells], labels=["a", "b", "a", "b", "a"]
    )
    sub = data.subset([1, 3])
    assert sub.n == 2 and sub.labels.tolist() == [1, 1] and sub.masks.shape[0] == 2
    assert sub.class_names == ["a", "b"] and sub.intensity == data.intensity
    assert data.subset(slice(0, 3)).n == 3
    assert data.subset(np.array([True, False, True, False, False])).n == 2


def test_from_arrays_labels() -> None:
    imgs = np.stack([make_cell(40, 40, seed=i)[0] for i in range(4)])
    d = from_arrays(imgs, labels=["ring", "disc", "ring", "disc"])
    assert d.class_names == ["disc", "ring"] and d.labels.tolist() == [1, 0, 1, 0]
    d = from_arrays(imgs, labels=[0, 2, 1, 0], class_names=["x", "y", "z"])
    assert d.class_names == ["x", "y", "z"] and d.labels.tolist() == [0, 2, 1, 0]
    d = from_arrays(imgs, labels=np.array([1, 0, 1, 0]))
    assert d.class_names == ["0", "1"]


def test_normalise_slide() -> None:
    rng = np.random.default_rng(0)
    slide = rng.normal(20, 2, (300, 400))
    yy, xx = np.mgrid[:300, :400]
    for cy, cx in [(60, 60), (150, 200), (240, 330)]:
        slide[(yy - cy) ** 2 + (xx - cx) ** 2 < 20**2] += 40
    out = normalise_slide(slide.astype(np.uint16))
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    assert np.median(out) < -0.5  # background is dark, as in the crops
    assert np.median(out[150 - 5 : 150 + 5, 200 - 5 : 200 + 5]) > 0.5  # cells bright


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is empty"):
        load_folder(tmp_path)


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_folder(tmp_path)


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    write_png(tmp_path / "good.png", make_cell(40, 40)[0])
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_folder(tmp_path)


def test_some_masks_missing(tmp_path: Path) -> None:
    for i in range(3):
        img, mask = make_cell(40, 40, seed=i)
        write_png(tmp_path / f"{i}.png", img)
        if i != 1:
            write_png(tmp_path / f"{i}_Mask.png", mask)
    with pytest.raises(ValueError, match=r"1\.png"):
        load_folder(tmp_path)


def test_small_crop_is_named(tmp_path: Path) -> None:
    write_png(tmp_path / "big.png", make_cell(40, 40)[0])
    write_png(tmp_path / "tiny.png", make_cell(12, 40, radius=4)[0])
    with pytest.raises(ValueError, match="tiny.png.*at least 16"):
        load_folder(tmp_path)


def test_multichannel_tiff_names_shape(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 40, 40), np.uint16))
    with pytest.raises(ValueError, match=r"\(5, 40, 40\)"):
        load_folder(tmp_path)


def test_mixed_layout(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    write_png(tmp_path / "A" / "1.png", make_cell(40, 40)[0])
    write_png(tmp_path / "loose.png", make_cell(40, 40)[0])
    with pytest.raises(ValueError, match="loose.png"):
        load_folder(tmp_path)


def test_not_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "x.png"
    write_png(f, make_cell(40, 40)[0])
    with pytest.raises(ValueError, match="not a folder"):
        load_folder(f)


def test_nan_values() -> None:
    img = make_cell(40, 40)[0].astype(np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        from_arrays([img])
    with pytest.raises(ValueError, match="NaN"):
        normalise_slide(np.full((50, 50), np.inf))


def test_3d_crops_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(40, 40, 3\)"):
        from_arrays([np.zeros((40, 40, 3))])
    with pytest.raises(ValueError, match=r"\(2, 40, 40, 3\)"):
        from_arrays(np.zeros((2, 40, 40, 3)))
    with pytest.raises(ValueError, match="single crop in a list"):
        from_arrays(np.zeros((40, 40)))
    with pytest.raises(ValueError, match="2-D grey"):
        normalise_slide(np.zeros((3, 40, 40)))


def test_small_array_crop() -> None:
    with pytest.raises(ValueError, match="image 1 is only 10x40"):
        from_arrays([np.ones((40, 40)), np.ones((10, 40))])


def test_mask_shape_mismatch() -> None:
    img, mask = make_cell(40, 40)
    with pytest.raises(ValueError, match="mask of image 0 has shape"):
        from_arrays([img], [mask[:-2]])
    with pytest.raises(ValueError, match="2 masks for 1 images"):
        from_arrays([img], [mask, mask])


def test_all_zero_mask() -> None:
    img, mask = make_cell(40, 40)
    with pytest.raises(ValueError, match="all zero"):
        from_arrays([img, img], [mask, np.zeros_like(mask)])


def test_label_errors() -> None:
    imgs = np.stack([make_cell(40, 40, seed=i)[0] for i in range(3)])
    with pytest.raises(ValueError, match="3 labels|2 labels"):
        from_arrays(imgs, labels=[0, 1])
    with pytest.raises(ValueError, match="not in class_names"):
        from_arrays(imgs, labels=["a", "b", "c"], class_names=["a", "b"])
    with pytest.raises(ValueError, match="has no name"):
        from_arrays(imgs, labels=[0, 1, 5], class_names=["a", "b"])


def test_no_images_given() -> None:
    with pytest.raises(ValueError, match="no images"):
        from_arrays([])


# --------------------------------------------------------------------------
# Real data (only where it is available)
# --------------------------------------------------------------------------
@pytest.mark.skipif(not (REAL / "Golgi").is_dir(), reason="real I3A crops not available")
def test_real_crops_smoke(tmp_path: Path) -> None:
    src = REAL / "Golgi"
    dst = tmp_path / "Golgi"
    dst.mkdir()
    names = sorted(p for p in src.iterdir() if p.suffix == ".png" and "_Mask" not in p.name)
    for p in names[:50]:
        shutil.copy(p, dst / p.name)
        shutil.copy(p.with_name(p.stem + "_Mask.png"), dst / (p.stem + "_Mask.png"))
    data = load_folder(tmp_path)
    assert data.n == 50 and data.class_names == ["Golgi"]
    assert data.images.shape == (50, 64, 64) and data.masks.shape == (50, 64, 64)
    # the cells are centred and the data are dim, as documented
    com = np.mean([centre_of_mass(m) for m in data.masks], axis=0)
    np.testing.assert_allclose(com, [31.5, 31.5], atol=2.0)
    assert data.intensity["hi"] < 120
    assert 30 < data.cell_diameter < 80
    out = render(data.images, data.intensity, seed=0)
    assert out.dtype == np.uint8 and out.max() < 255


def test_prepare_crop_box_maps_back() -> None:
    img, mask = make_cell(40, 70, radius=10)
    x, m, box = prepare_crop(img, None, 32, return_box=True)
    assert x.shape == (32, 32) and m is None
    side, top, left = box
    assert side == 70 and top == 15 and left == 0
    x2, m2 = prepare_crop(img, mask, 32)
    assert m2.shape == (32, 32) and m2.dtype == np.uint8
    data = from_arrays([img], [mask], image_size=32)
    np.testing.assert_array_equal(x2, data.images[0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, ">u2"])
def test_slide_levels_of_integer_slides_equal_numpy_percentiles(dtype):
    from napari_atagan.data import slide_levels

    rng = np.random.default_rng(4)
    top = 255 if np.dtype(dtype).itemsize == 1 else 5000
    slide = rng.integers(0, top, (300, 257)).astype(dtype)
    slide[100:140, 50:90] = top  # a bright cell
    want = np.percentile(slide.astype(np.float32), [0.5, 99.5])
    assert slide_levels(slide) == pytest.approx(tuple(want), abs=1e-6)
    assert slide_levels(slide, lo_pct=0, hi_pct=100) == (float(slide.min()), float(slide.max()))
