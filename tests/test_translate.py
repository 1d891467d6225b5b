"""Attention-guided translation: config, networks, training, checkpoints and tiled apply."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from napari_atagan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_atagan.simulate import simulate_crops, write_crops_folder
from napari_atagan.events import (
    CheckpointSaved,
    Finished,
    Message,
    Progress,
    Samples,
    run_to_end,
)
from napari_atagan.translate import (
    HARD_CUT,
    SAMPLE_ROWS,
    AttentionNetwork,
    PatchDiscriminator,
    Stopped,
    TranslateConfig,
    TranslationGenerator,
    compose,
    load_domains,
    load_translator,
    nothing_attended,
    standing_statistics,
    train_translation,
    translate_image,
)

PATTERNS = ("Homogeneous", "NuMem")


def tiny(**changes) -> TranslateConfig:
    base = dict(image_size=16, widths=(4, 8, 8), n_res_blocks=1, attention_widths=(4, 4),
                d_widths=(4, 8), batch_size=4, steps=6, device="cpu", log_every=1,
                sample_every=3, checkpoint_every=4, attention_freeze_after=0.5)
    base.update(changes)
    return TranslateConfig(**base)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two folders of 32 px crops (with masks): dim cells and bright cells."""
    root = tmp_path_factory.mktemp("domains")
    dim = simulate_crops(8, size=32, seed=1, intensity=0.3, patterns=PATTERNS)
    bright = simulate_crops(8, size=32, seed=2, intensity=1.0, patterns=PATTERNS)
    return (write_crops_folder(dim, root / "dim"), write_crops_folder(bright, root / "bright"),
            dim, bright)


@pytest.fixture(scope="module")
def trained(domains, tmp_path_factory):
    """A tiny attention model trained 6 steps (attention frozen after step 3)."""
    out = tmp_path_factory.mktemp("translate_run")
    events = list(train_translation(tiny(), domains[0], domains[1], out))
    return events, out


@pytest.fixture(scope="module")
def slide():
    """A 300 x 410 float32 image: crops of both domains side by side on a dark field."""
    rng = np.random.default_rng(0)
    image = rng.normal(8.0, 1.0, (300, 410)).astype(np.float32)
    cells = simulate_crops(12, size=32, seed=5, intensity=0.5, patterns=PATTERNS).images
    for k, cell in enumerate(cells):
        y, x = 20 + 90 * (k // 4), 15 + 100 * (k % 4)
        image[y:y + 32, x:x + 32] = np.maximum(image[y:y + 32, x:x + 32], cell)
    return image


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, match", [
    (dict(image_size=18), "multiple of 4"),
    (dict(image_size=12), "at least 16"),
    (dict(widths=(8, 16)), "widths must be 3"),
    (dict(attention_widths=(8, 16, 32)), "attention_widths must be 2"),
    (dict(d_widths=(8, 16, 32)), "too small for 3 discriminator"),
    (dict(attention_threshold=1.5), "attention_threshold"),
    (dict(attention_freeze_after=0.0), "attention_freeze_after"),
    (dict(cycle_weight=-1.0), "cycle_weight"),
    (dict(cycle_sigma=-1.0), "cycle_sigma"),
    (dict(cycle_sigma=20.0), "cycle_sigma"),
    (dict(image_size=32, cycle_sigma=11.0), "as far as the 32-pixel crop"),
    (dict(mask_weight=-0.5), "mask_weight"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(betas=(0.5, 1.5)), "betas"),
    (dict(batch_size=0), "batch_size"),
    (dict(steps=0), "steps"),
    (dict(device="tpu"), "device"),
    (dict(grey_levels="auto"), "grey_levels must be one of shared, own, target"),
    (dict(attention="yes"), "attention must be true or false"),
    (dict(generator_skip=1), "generator_skip must be true or false"),
    (dict(widths=(8, 0, 8)), "widths must be whole numbers >= 1"),
])
def test_config_refuses_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(**changes)


def test_config_round_trip_quick_and_options():
    config = tiny(extra={"note": "x"})
    assert TranslateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown translation option.*colour"):
        TranslateConfig.from_dict(dict(config.to_dict(), colour=1))
    quick = TranslateConfig.quick()
    assert quick.image_size == 64 and quick.steps == 2000 and quick.attention
    assert TranslateConfig.quick(steps=10).steps == 10
    assert TranslateConfig.parse_option("attention=false") == ("attention", False)
    assert TranslateConfig.parse_option("widths=[8,16,32]") == ("widths", [8, 16, 32])
    assert TranslateConfig.parse_option("cycle_weight=5") == ("cycle_weight", 5.0)
    with pytest.raises(ValueError, match="unknown translation option 'colour'"):
        TranslateConfig.parse_option("colour=1")
    with pytest.raises(ValueError, match="steps must be int"):
        TranslateConfig.parse_option("steps=lots")
    assert tiny().freeze_step == 3 and tiny(attention=False).freeze_step is None
    assert tiny(attention_freeze_after=1.0).freeze_step is None


# --------------------------------------------------------------------------- networks
def test_networks_are_fully_convolutional_and_attention_is_in_unit_range():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 20, 28)
    generator, attention = TranslationGenerator((4, 8, 8), 1), AttentionNetwork((4, 4))
    plain = TranslationGenerator((4, 8, 8), 1, skip=False)
    with torch.no_grad():
        y, a, p = generator(x), attention(x), plain(x)
    assert y.shape == a.shape == p.shape == x.shape
    assert float(y.abs().max()) <= 1.5 and float(p.abs().max()) <= 1.0
    # a skip generator starts near the identity, a plain one near flat grey
    assert float((y - x.clamp(-1.5, 1.5)).abs().mean()) < 0.5 * float((p - x).abs().mean())
    assert float(p.abs().mean()) < 0.3
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert PatchDiscriminator((4, 8))(torch.randn(2, 1, 16, 16)).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="multiples of 4"):
        generator(torch.randn(1, 1, 18, 20))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        attention(torch.randn(1, 3, 16, 16))


def test_compose_keeps_the_input_exactly_where_the_attention_is_zero():
    torch.manual_seed(1)
    x, f = torch.randn(1, 1, 8, 8) * 3, torch.randn(1, 1, 8, 8)
    att = torch.rand(1, 1, 8, 8)
    att[..., :4] = 0.0
    att[..., -1] = 1.0
    y = compose(x, att, f)
    assert torch.equal(y[..., :4], x[..., :4])
    assert torch.equal(y[..., -1], f[..., -1])
    assert torch.allclose(y, att * f + (1 - att) * x)
    assert compose(x, None, f) is f


def test_a_hard_composite_either_translates_a_pixel_or_keeps_it():
    torch.manual_seed(2)
    x, f = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    att = torch.rand(1, 1, 8, 8)
    att[0, 0, 0, :3] = torch.tensor([0.5, 0.5001, 0.4999])  # the cut itself is not the cell's
    y = compose(x, att, f, "hard")
    cell = att > HARD_CUT
    assert torch.equal(y[cell], f[cell]) and torch.equal(y[~cell], x[~cell])
    assert 0 < int(cell.sum()) < cell.numel()
    assert y[0, 0, 0, 0] == x[0, 0, 0, 0] and y[0, 0, 0, 1] == f[0, 0, 0, 1]
    assert compose(x, None, f, "hard") is f  # no attention: the whole image is translated
    with pytest.raises(ValueError, match="composite must be one of soft, hard"):
        compose(x, att, f, "blend")


@pytest.mark.parametrize("composite", ["soft", "hard"])
def test_compose_parts_add_up_to_the_composite(composite):
    from napari_atagan.translate import compose_parts

    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1 for _ in range(2))
    att = torch.rand(2, 1, 8, 8, generator=gen)
    for a in (att, None):
        kept, moved = compose_parts(x, a, y, composite)
        torch.testing.assert_close(kept + moved - 1.0, compose(x, a, y, composite))
    kept, moved = compose_parts(x, torch.zeros_like(att), y, composite)
    assert torch.equal(moved, torch.zeros_like(moved))  # nothing of the translation


def test_nothing_attended_is_an_attention_above_the_cut_nowhere():
    low = np.full((8, 8), 0.3, np.float32)
    assert nothing_attended(low) and nothing_attended(np.zeros((0, 0), np.float32))
    low[2, 3] = HARD_CUT  # the cut itself is kept, not translated
    assert nothing_attended(low)
    low[2, 3] = 0.51
    assert not nothing_attended(low)


def test_receptive_radius_bounds_the_context_in_eval_mode():
    torch.manual_seed(2)
    for net in (TranslationGenerator((4, 8, 8), 2), AttentionNetwork((4, 4))):
        standing_statistics(net, torch.randn(8, 1, 16, 16))
        net.eval()
        x = torch.randn(1, 1, 96, 96, requires_grad=True)
        net(x)[0, 0, 48, 48].backward()
        rows, cols = np.nonzero(x.grad[0, 0].numpy())
        reach = max(np.abs(rows - 48).max(), np.abs(cols - 48).max())
        assert 0 < reach <= net.receptive_radius < 48


# --------------------------------------------------------------------------- data
def test_both_domains_share_one_fixed_grey_scale(domains):
    dim_dir, bright_dir, dim, bright = domains
    dom_a, dom_b, levels = load_domains(dim_dir, bright_dir, image_size=16)
    pooled = np.concatenate([dim.images.ravel(), bright.images.ravel()]).astype(np.float64)
    assert levels.lo == pytest.approx(np.percentile(pooled, 0.5))
    assert levels.hi == pytest.approx(np.percentile(pooled, 99.5))
    assert dom_a.name == "dim" and dom_b.name == "bright" and dom_a.has_masks
    assert dom_a.images.shape == (8, 16, 16) and dom_a.images.dtype == np.float32
    assert -1.5 <= dom_a.images.min() and dom_b.images.max() <= 1.5
    # no per-crop normalisation: dim cells stay darker than bright ones
    assert dom_a.images.max(axis=(1, 2)).mean() < dom_b.images.max(axis=(1, 2)).mean() - 0.3
    assert 0 < dom_a.model_cell_diameter < 16 and dom_a.cell_diameter > dom_a.model_cell_diameter
    # arrays and crop sets work too, and given levels are used as they are
    again = load_domains(dim, bright.images, image_size=16, levels=levels)
    by_pattern = np.argsort(dim.labels, kind="stable")  # the folder's order
    np.testing.assert_array_equal(again[0].images[by_pattern], dom_a.images)
    assert again[1].masks is None and again[2] == levels


def test_own_levels_map_every_crop_by_its_own_percentiles(domains):
    from napari_atagan.translate import own_levels

    dim_dir, bright_dir, dim, bright = domains
    shared_a, shared_b, levels = load_domains(dim_dir, bright_dir, image_size=16)
    own_a, own_b, same = load_domains(dim_dir, bright_dir, image_size=16, own_levels=True)
    assert same == levels  # the pooled levels are still measured, for reference
    # brightness is gone: dim and bright crops reach the same top of the model range
    top = lambda d: d.images.max(axis=(1, 2)).mean()  # noqa: E731
    assert top(shared_a) < top(shared_b) - 0.3
    assert abs(top(own_a) - top(own_b)) < 0.15
    # a crop recorded twice as bright on a raised floor is the same crop to the model
    crops = [c.astype(np.float32) for c in dim.images[:3]]
    once = load_domains(crops, crops, image_size=16, own_levels=True)[0].images
    twice = load_domains([2 * c + 30 for c in crops], crops, image_size=16,
                         own_levels=True)[0].images
    np.testing.assert_allclose(once, twice, atol=1e-5)
    lv = own_levels(crops[0])
    assert lv.lo == pytest.approx(np.percentile(crops[0], 0.5))
    assert lv.hi == pytest.approx(np.percentile(crops[0], 99.5))
    with pytest.raises(ValueError, match="crop 1 has one grey value"):
        load_domains([crops[0], np.full((20, 20), 7.0)], crops, own_levels=True)
    with pytest.raises(ValueError, match="NaN"):
        own_levels(np.full((20, 20), np.nan))


def test_domain_input_errors(domains, tmp_path):
    from napari_atagan.data import from_arrays

    dim_dir, bright_dir, dim, _ = domains
    with pytest.raises(ValueError, match="does not exist"):
        load_domains(tmp_path / "nothing", bright_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        load_domains(tmp_path / "empty", bright_dir)
    with pytest.raises(ValueError, match="normalised one by one"):
        load_domains(from_arrays(dim.images[:2], image_size=16), bright_dir)
    with pytest.raises(ValueError, match="colour"):
        load_domains(np.zeros((2, 32, 32, 3), np.uint8), bright_dir)
    with pytest.raises(ValueError, match="at least 16x16"):
        load_domains([np.zeros((8, 40), np.uint8)], bright_dir)
    with pytest.raises(ValueError, match="at least 2 per domain"):
        list(train_translation(tiny(), dim.images[:1], bright_dir, tmp_path / "run"))


# --------------------------------------------------------------------------- training
def test_training_yields_events_and_a_complete_checkpoint(trained, domains):
    events, out = trained
    kinds = {type(e) for e in events}
    assert {Message, Progress, Samples, CheckpointSaved, Finished} <= kinds
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [4, 6]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == list(range(1, 7))
    assert {"d", "g", "cycle", "attention_a", "attention_b"} <= set(progress[-1].losses)
    assert any("attention frozen at step 3" in e.text for e in events if isinstance(e, Message))
    samples = [e for e in events if isinstance(e, Samples)][-1]
    assert samples.images.shape == (36, 16, 16) and samples.images.dtype == np.float32
    assert list(np.unique(samples.labels)) == list(range(len(SAMPLE_ROWS)))
    assert np.abs(samples.images).max() <= 1.0

    translator = load_translator(events[-1].checkpoint)
    assert translator.config == tiny() and translator.step == 6
    levels = load_domains(domains[0], domains[1], image_size=16)[2]
    assert translator.levels == levels
    assert translator.domains["a"]["name"] == "dim"
    assert translator.domains["b"]["folder"] == str(domains[1])
    assert translator.checkpoint.family == "translate"
    assert translator.checkpoint.metadata["attention_frozen_at"] == 3
    assert set(translator.checkpoint.module_names) == {"F_ab", "F_ba", "A_a", "A_b", "D_a", "D_b"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["finished"]


def test_resume_continues_from_the_saved_step(trained, domains, tmp_path):
    events, _ = trained
    resumed = list(train_translation(tiny(steps=8), domains[0], domains[1], tmp_path,
                                     resume=events[-1].checkpoint))
    assert any("resumed" in e.text and "step 6" in e.text
               for e in resumed if isinstance(e, Message))
    assert not any("attention frozen" in e.text for e in resumed if isinstance(e, Message))
    assert [e.step for e in resumed if isinstance(e, Progress)] == [7, 8]
    ckpt = load_translator(resumed[-1].checkpoint).checkpoint
    assert ckpt.step == 8 and ckpt.config.steps == 8
    assert ckpt.metadata["attention_frozen_at"] == 3  # frozen once, stays frozen


def test_a_resumed_run_continues_exactly(domains, tmp_path):
    config = tiny(steps=4, attention_freeze_after=1.0, lr_decay_after=1.0, sample_every=100)
    straight = run_to_end(train_translation(config, domains[0], domains[1], tmp_path / "s"))
    first = run_to_end(train_translation(config.replace(steps=2), domains[0], domains[1],
                                         tmp_path / "r"))
    second = run_to_end(train_translation(config, domains[0], domains[1], tmp_path / "r",
                                          resume=first.checkpoint))
    a, b = load_checkpoint(straight.checkpoint, family=None), load_checkpoint(second.checkpoint,
                                                                             family=None)
    for name in ("F_ab", "A_b", "D_a"):
        for key, value in a.state_dict(name).items():
            assert torch.equal(value, b.state_dict(name)[key]), (name, key)


def test_stop_ends_early_with_a_loadable_checkpoint(domains, tmp_path):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    done = run_to_end(train_translation(tiny(steps=50), domains[0], domains[1], tmp_path / "a",
                                        stop=stop))
    assert done.stopped and load_translator(done.checkpoint).step == 2

    event = threading.Event()
    events = train_translation(tiny(steps=50), domains[0], domains[1], tmp_path / "b",
                               stop=event)
    for ev in events:
        if isinstance(ev, Progress):
            event.set()
    assert isinstance(ev, Finished) and ev.stopped and ev.summary["steps"] == 1

    closed = train_translation(tiny(steps=50), domains[0], domains[1], tmp_path / "c")
    for ev in closed:
        if isinstance(ev, Progress) and ev.step == 2:
            closed.close()
    assert load_translator(tmp_path / "c" / "checkpoint.safetensors").step == 2


def test_the_cyclegan_baseline_trains_and_has_no_attention(domains, tmp_path, slide):
    done = run_to_end(train_translation(tiny(attention=False, steps=3), domains[0], domains[1],
                                        tmp_path))
    translator = load_translator(done.checkpoint)
    assert not translator.attention
    assert set(translator.checkpoint.module_names) == {"F_ab", "F_ba", "D_a", "D_b"}
    translated, attention = translate_image(translator, slide[:64, :80], device="cpu")
    assert attention.dtype == np.float32 and np.all(attention == 1.0)
    assert translated.shape == (64, 80) and np.isfinite(translated).all()


def test_the_mask_teacher_pulls_the_attention_toward_the_cells(domains, tmp_path):
    events = list(train_translation(tiny(mask_weight=5.0, steps=40, attention_freeze_after=1.0, lr=1e-3),
                                    domains[0], domains[1], tmp_path))
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("learns from the cell masks of 'dim' and 'bright'" in t for t in texts), texts
    mask_loss = [e.losses["mask"] for e in events if isinstance(e, Progress)]
    assert len(mask_loss) == 40
    assert np.mean(mask_loss[-8:]) < 0.8 * np.mean(mask_loss[:8])


def test_the_low_pass_cycle_ignores_fine_texture_and_keeps_the_rest():
    import torch

    from napari_atagan.translate.training import _low_pass

    x = torch.rand(2, 1, 32, 32)
    assert _low_pass(0.0, torch.device("cpu"))(x) is x
    blur = _low_pass(2.0, torch.device("cpu"))
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert torch.allclose(blur(flat), flat, atol=1e-6)  # brightness comes back as it was
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (((yy + xx) % 2).float() - 0.5).view(1, 1, 32, 32)  # 1-pixel texture
    assert blur(checker).abs().max() < 0.01
    disc = (((yy - 16) ** 2 + (xx - 16) ** 2) < 64).float().view(1, 1, 32, 32)
    assert (blur(disc) - blur(torch.zeros_like(disc))).abs().max() > 0.5  # a cell does not


def test_training_with_a_low_pass_cycle(domains, tmp_path):
    done = run_to_end(train_translation(tiny(cycle_sigma=1.5, steps=3), domains[0],
                                        domains[1], tmp_path))
    translator = load_translator(done.checkpoint)
    assert translator.config.cycle_sigma == 1.5


def test_own_levels_keep_the_brightness_of_what_is_translated(domains, tmp_path, slide):
    done = run_to_end(train_translation(tiny(grey_levels="own", steps=3), domains[0],
                                        domains[1], tmp_path))
    translator = load_translator(done.checkpoint)
    assert translator.config.grey_levels == "own"
    image = slide[:96, :120].copy()
    once, att = translate_image(translator, image, device="cpu")
    brighter, att2 = translate_image(translator, 3 * image + 7, device="cpu")
    # the image is mapped by its own levels, so a brighter recording of the same slide
    # gives the same translation, as bright
    np.testing.assert_allclose(brighter, 3 * once + 7, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(att, att2, atol=1e-6)
    resumed = run_to_end(train_translation(tiny(steps=4), domains[0], domains[1],
                                           tmp_path / "more", resume=done.checkpoint))
    assert load_translator(resumed.checkpoint).config.grey_levels == "own"  # the run's own
    tiled, _ = translate_image(translator, 3 * image + 7, tile_size=32, device="cpu")
    np.testing.assert_allclose(tiled, brighter, rtol=1e-5, atol=1e-3)  # no seams
    with pytest.raises(ValueError, match="one grey value"):
        translate_image(translator, np.full((40, 40), 5, np.uint8), device="cpu")


def test_every_domain_records_the_median_grey_range_of_its_crops(domains):
    dim_dir, bright_dir, dim, bright = domains
    a, b, _ = load_domains(dim_dir, bright_dir, image_size=16)
    for dom, crops in ((a, dim), (b, bright)):
        spans = [np.subtract(*np.percentile(c.astype(np.float32), [99.5, 0.5]))
                 for c in crops.images]
        assert dom.own_span == pytest.approx(np.median(spans), rel=1e-5)
        assert dom.info()["own_span"] == pytest.approx(dom.own_span)
    assert b.own_span > 2 * a.own_span  # the bright crops stand higher above their floor


def test_target_levels_give_the_translated_cells_the_target_domains_brightness(
        domains, tmp_path):
    config = tiny(grey_levels="target", attention=False, steps=3)
    assert config.own_levels and tiny(grey_levels="own").own_levels
    assert not tiny().own_levels
    done = run_to_end(train_translation(config, domains[0], domains[1], tmp_path))
    translator = load_translator(done.checkpoint)
    span_b = translator.own_span("b")
    assert span_b == pytest.approx(load_domains(domains[0], domains[1])[1].own_span)
    # a generator that changes nothing: what is left is the grey levels' mapping
    generator, _ = translator.networks("a2b", "cpu")
    last = generator.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    yy, xx = np.mgrid[:48, :48]
    image = np.full((48, 48), 10.0, np.float32)
    image[(yy - 24) ** 2 + (xx - 24) ** 2 < 8 ** 2] = 16.0  # a dim cell, 6 levels up
    out, att = translate_image(translator, image, device="cpu")
    # the cell comes out at the target domain's range above the input's own floor,
    # however dim it went in; the background stays where it was
    assert out[24, 24] == pytest.approx(10.0 + span_b, rel=1e-3)
    assert out[2, 2] == pytest.approx(10.0, abs=1e-3)
    np.testing.assert_array_equal(att, 1.0)
    dimmer, _ = translate_image(translator, (image - 10) / 3 + 10, device="cpu")
    np.testing.assert_allclose(dimmer, out, rtol=1e-4, atol=1e-3)
    # and back: a bright cell goes to the dim domain's range
    generator, _ = translator.networks("b2a", "cpu")
    torch.nn.init.zeros_(generator.net[-1].weight)
    torch.nn.init.zeros_(generator.net[-1].bias)
    back, _ = translate_image(translator, image, direction="b2a", device="cpu")
    assert back[24, 24] == pytest.approx(10.0 + translator.own_span("a"), rel=1e-3)


def test_a_target_run_keeps_every_pixel_it_does_not_translate(domains, tmp_path, slide):
    done = run_to_end(train_translation(tiny(grey_levels="target", steps=3), domains[0],
                                        domains[1], tmp_path))
    from napari_atagan.translate.data import local_levels

    image = slide[:96, :120].copy()
    out, att = translate_image(done.checkpoint, image, device="cpu", composite="hard")
    # a kept pixel is the input, through its own levels and back (within the model range)
    lo, span = local_levels(image, 16).region(slice(0, 96), slice(0, 120))
    kept = (att <= HARD_CUT) & (np.abs(image - lo - span / 2) < 0.74 * span)
    assert kept.mean() > 0.5
    np.testing.assert_allclose(out[kept], image[kept], rtol=1e-5, atol=1e-4)
    tiled, _ = translate_image(done.checkpoint, image, device="cpu", composite="hard",
                               tile_size=32)
    np.testing.assert_allclose(tiled, out, rtol=1e-5, atol=1e-3)  # no seams
    default, _ = translate_image(done.checkpoint, image, device="cpu")
    np.testing.assert_array_equal(default, out)  # the hard composite is such a model's own
    resumed = run_to_end(train_translation(tiny(steps=4), domains[0], domains[1],
                                           tmp_path / "more", resume=done.checkpoint))
    again = load_translator(resumed.checkpoint)
    assert again.config.grey_levels == "target"  # the run's own, with its grey ranges
    assert again.own_span("b") == pytest.approx(load_translator(done.checkpoint).own_span("b"))


def test_a_target_run_without_a_grey_range_says_so(trained):
    from napari_atagan.translate.translator import Translator

    translator = load_translator(trained[1] / "checkpoint.safetensors")
    ckpt = translator.checkpoint
    del ckpt.metadata["domains"]["b"]["own_span"]
    with pytest.raises(CheckpointError, match="no grey range for domain B"):
        Translator(ckpt).own_span("b")


def test_local_levels_give_every_cell_its_own_high_level():
    from napari_atagan.translate import own_levels
    from napari_atagan.translate.data import LOCAL_FLOOR, local_levels

    yy, xx = np.mgrid[:400, :600]
    image = np.full((400, 600), 10.0, np.float32)
    image[(yy - 100) ** 2 + (xx - 100) ** 2 < 21 ** 2] = 60.0  # a dim cell, 2/3 of a crop
    image[(yy - 300) ** 2 + (xx - 450) ** 2 < 21 ** 2] = 200.0  # a bright one
    whole = own_levels(image)
    levels = local_levels(image, crop_side=64)
    assert levels.lo == whole.lo == 10.0
    hi = lambda y, x: float(sum(levels.region(slice(y, y + 1), slice(x, x + 1)))[0, 0])  # noqa: E731
    assert hi(100, 100) == pytest.approx(60.0, rel=0.1)  # as its own crop would have
    assert hi(300, 450) == pytest.approx(200.0, rel=0.1)
    # background far from both: no cell to stretch to, the floor
    assert hi(380, 20) == pytest.approx(whole.lo + LOCAL_FLOOR * (whole.hi - whole.lo), rel=0.05)



def test_local_levels_read_a_slide_in_bands_as_they_read_it_whole(monkeypatch, tmp_path):
    from napari_atagan.slides import background
    from napari_atagan.translate.data import local_levels

    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 20.0, (300, 260)).astype(np.float32)
    whole = local_levels(image, crop_side=48)
    stored = np.lib.format.open_memmap(tmp_path / "slide.npy", "w+", np.float32, image.shape)
    stored[:] = image
    stored.flush()
    monkeypatch.setattr(background, "_BAND_PIXELS", 260 * 3 * 7)  # 7 block rows a band
    banded = local_levels(np.load(tmp_path / "slide.npy", mmap_mode="r"), crop_side=48)
    rows, cols = slice(0, 300), slice(0, 260)
    np.testing.assert_array_equal(banded.region(rows, cols)[1], whole.region(rows, cols)[1])
    assert banded.lo == whole.lo


def test_apply_never_changes_the_input(trained, slide, tmp_path):
    translator = load_translator(trained[0][-1].checkpoint)
    image = slide.copy()
    translate_image(translator, image, tile_size=64, device="cpu")
    np.testing.assert_array_equal(image, slide)  # float32: tiles are read, not reused
    stored = np.lib.format.open_memmap(tmp_path / "slide.npy", "w+", np.float32, slide.shape)
    stored[:] = slide
    stored.flush()
    writable = np.load(tmp_path / "slide.npy", mmap_mode="r+")
    translate_image(translator, writable, tile_size=64, device="cpu")
    del writable
    np.testing.assert_array_equal(np.load(tmp_path / "slide.npy"), slide)


def test_the_mask_teacher_says_when_there_are_no_masks(domains, tmp_path):
    images = [domains[2].images, domains[3].images]  # arrays: no masks
    events = list(train_translation(tiny(mask_weight=1.0, steps=2), *images, tmp_path))
    assert any("neither domain" in e.text for e in events if isinstance(e, Message))
    assert all("mask" not in e.losses for e in events if isinstance(e, Progress))


# --------------------------------------------------------------------------- apply
def test_tiles_leave_no_seams(trained, slide):
    translator = load_translator(trained[0][-1].checkpoint)
    levels = translator.levels
    tiled, att_tiled = translate_image(translator, slide, tile_size=64, device="cpu")
    whole, att_whole = translate_image(translator, slide, tile_size=1024, device="cpu")
    assert tiled.dtype == np.float32 and tiled.shape == slide.shape == att_tiled.shape
    # within 1e-4 of the grey range (float rounding of convolutions of other sizes)
    assert np.abs(tiled - whole).max() <= 1e-4 * (levels.hi - levels.lo)
    assert np.abs(att_tiled - att_whole).max() <= 1e-4
    assert 0.0 <= att_tiled.min() and att_tiled.max() <= 1.0
    # rescaled to the training cells and back: still seamless, at the input's size
    small, _ = translate_image(translator, slide, cell_diameter=40, tile_size=32, device="cpu")
    big, _ = translate_image(translator, slide, cell_diameter=40, tile_size=512, device="cpu")
    assert small.shape == slide.shape
    assert np.abs(small - big).max() <= 1e-4 * (levels.hi - levels.lo)


def test_a_hard_composite_keeps_the_image_where_the_attention_is_low(trained, slide):
    translator = load_translator(trained[0][-1].checkpoint)
    span = translator.levels.hi - translator.levels.lo
    soft, att = translate_image(translator, slide, tile_size=64, device="cpu")
    hard, att_hard = translate_image(translator, slide, tile_size=64, device="cpu",
                                     composite="hard")
    np.testing.assert_array_equal(att_hard, att)  # the attention returned is the soft map
    kept, cell = att <= HARD_CUT, att > HARD_CUT
    assert kept.any() and cell.any()
    # at the image's own scale a kept pixel is the input, through the grey levels and back
    lo, hi = translator.levels.lo, translator.levels.hi
    clipped = np.clip(slide, lo - 0.25 * span, hi + 0.25 * span)  # the model range, +-1.5
    assert np.abs(hard[kept] - clipped[kept]).max() <= 1e-4 * span
    # the soft composite blends, so it changed the kept pixels more (or as much)
    assert np.abs(soft - slide)[kept].mean() >= np.abs(hard - slide)[kept].mean()
    # tiles leave no seams in the hard composite either
    whole, _ = translate_image(translator, slide, tile_size=1024, device="cpu", composite="hard")
    assert np.abs(hard - whole).max() <= 1e-4 * span


def test_output_keeps_the_input_dtype_and_grey_levels(trained, slide, tmp_path):
    translator = load_translator(trained[0][-1].checkpoint)
    image = np.clip(slide * 200, 0, 65535).astype(np.uint16)
    done = []
    out_t = np.lib.format.open_memmap(tmp_path / "t.npy", "w+", np.uint16, image.shape)
    out_a = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.float32, image.shape)
    translated, attention = translate_image(
        translator, image, direction="b2a", tile_size=96, device="cpu", out=(out_t, out_a),
        progress=lambda k, n: done.append((k, n)))
    assert translated is out_t and attention is out_a
    assert translated.dtype == np.uint16 and done[-1][0] == done[-1][1] > 1
    whole, _ = translate_image(translator, image, direction="b2a", tile_size=1024,
                               device="cpu")
    assert np.abs(translated.astype(np.int64) - whole).max() <= 1  # a rounding at most
    # grey levels come back on the input's scale: the model range [-1, 1] is [lo, hi]
    lo, hi = translator.levels.lo, translator.levels.hi
    assert lo - 0.5 * (hi - lo) - 1 <= whole.min() and whole.max() <= hi + 0.5 * (hi - lo) + 1
    crop = translate_image(translator, image[:40, :36].astype(np.uint8), device="cpu")[0]
    assert crop.dtype == np.uint8 and crop.shape == (40, 36)


def test_apply_stops_between_tiles(trained, slide):
    with pytest.raises(Stopped):
        translate_image(trained[0][-1].checkpoint, slide, tile_size=64, device="cpu",
                        stop=lambda: True)


@pytest.mark.parametrize("image, kwargs, match", [
    (np.zeros((40, 40, 3), np.uint8), {}, "colour"),
    (np.zeros((3, 40, 40), np.uint8), {}, "3-D"),
    (np.zeros((10, 40), np.uint8), {}, "at least 16 x 16"),
    (np.full((40, 40), np.nan, np.float32), {}, "NaN"),
    (np.zeros((40, 40), bool), {}, "numeric"),
    (np.zeros((40, 40), np.uint8), {"direction": "a2c"}, "direction"),
    (np.zeros((40, 40), np.uint8), {"cell_diameter": -3}, "cell_diameter"),
    (np.zeros((40, 40), np.uint8), {"cell_diameter": 400}, "shrinks"),
    (np.zeros((40, 40), np.uint8), {"tile_size": 8}, "tile_size"),
    (np.zeros((40, 40), np.uint8), {"composite": "blend"}, "composite must be one of"),
    (np.zeros((40, 40), np.uint8), {"out": (np.zeros((4, 4), np.uint8), None)}, "shape"),
    (np.zeros((40, 40), np.uint8), {"out": (np.zeros((40, 40), np.uint16), None)}, "dtype"),
])
def test_apply_refuses_bad_input(trained, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        translate_image(trained[0][-1].checkpoint, image, device="cpu", **kwargs)


# --------------------------------------------------------------------------- families
def test_checkpoint_families_are_told_apart(trained, tmp_path):
    from napari_atagan.gan.config import TrainConfig
    from napari_atagan.gan.models import build_models
    from napari_atagan.slides.attention import slide_attention

    config = TrainConfig(image_size=16, z_dim=8, g_channels=(16, 8), d_channels=(8, 16))
    g, d = build_models(config, 0)
    atagan = save_checkpoint(tmp_path / "atagan", config=config, modules={"G": g, "D": d})
    translate = trained[0][-1].checkpoint

    with pytest.raises(CheckpointError, match=r"is an ATA-GAN checkpoint, not an attention-guided"
                                              r".*\(on the command line: napari-atagan attention"):
        load_translator(atagan)
    with pytest.raises(CheckpointError, match=r"not an ATA-GAN checkpoint: open it with "
                                              r"napari_atagan.translate.load_translator \(on the "
                                              r"command line: napari-atagan translate apply\)"):
        load_checkpoint(translate)
    with pytest.raises(CheckpointError, match="translation"):
        slide_attention(translate, np.zeros((64, 64), np.float32), cell_diameter=10)
    with pytest.raises(CheckpointError, match="ATA-GAN checkpoint"):
        translate_image(atagan, np.zeros((32, 32), np.uint8), device="cpu")
    either = load_checkpoint(translate, family=None)
    assert either.family == "translate" and isinstance(either.config, TranslateConfig)
    with pytest.raises(CheckpointError, match="has no ATA-GAN discriminator"):
        either.discriminator()
    assert load_checkpoint(atagan).family == "atagan"
    assert load_checkpoint(atagan).metadata["family"] == "atagan"
