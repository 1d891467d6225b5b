import pytest

from napari_atagan.gan.config import TrainConfig, generator_channels


def test_defaults_are_valid_and_round_trip():
    cfg = TrainConfig()
    assert cfg.image_size == 4 * 2 ** len(cfg.g_channels)
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_teacher_none_means_beta_zero():
    assert TrainConfig(teacher="none", beta=3.0).effective_beta == 0.0
    assert TrainConfig(teacher="mask", beta=3.0).effective_beta == 3.0


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"teacher": "teacher"}, "teacher"),
        ({"device": "tpu"}, "device"),
        ({"conditioning": "concat"}, "conditioning"),
        ({"g_padding": "circular"}, "g_padding"),
        ({"image_size": 48}, "image_size"),
        ({"image_size": 128}, "g_channels"),
        ({"steps": 0}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"beta": -1.0}, "beta"),
        ({"aug_zoom_min": 0.0}, "aug_zoom_min"),
        ({"aug_p": 2.0}, "aug_p"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_out_of_range_values_name_the_field(changes, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**changes)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})


def test_both_kinds_of_run_read_and_check_their_configs_alike():
    from napari_atagan.translate import TranslateConfig

    for cls, kind in ((TrainConfig, "training"), (TranslateConfig, "translation")):
        with pytest.raises(ValueError, match=f"a {kind} config must be a dict, got list"):
            cls.from_dict([1, 2])
        with pytest.raises(ValueError, match=f"unknown {kind} option 'stepz'; options: "):
            cls.parse_option("stepz=3")
        with pytest.raises(ValueError, match="steps must be int like"):
            cls.parse_option("steps=2.5")
        assert cls.parse_option("steps=7") == ("steps", 7)
        config = cls(device="cuda:1")  # a numbered GPU, resolved only when a run starts
        assert cls.from_dict(config.to_dict()) == config
        with pytest.raises(ValueError, match="device must be one of"):
            cls(device="gpu")
    # a saved training config older than an option reads as it was trained
    saved = TrainConfig().to_dict()
    del saved["classifier_jitter"]
    assert TrainConfig.from_dict(saved).classifier_jitter is False


@pytest.mark.parametrize("size, n", [(16, 2), (32, 3), (64, 4), (128, 5)])
def test_generator_channels_match_the_size(size, n):
    g = generator_channels(size)
    assert len(g) == n
    TrainConfig(image_size=size, g_channels=g)


@pytest.mark.parametrize("text, expected", [
    ("aug_p=0.5", ("aug_p", 0.5)),
    ("beta=2", ("beta", 2.0)),
    ("spectral_norm=true", ("spectral_norm", True)),
    ("d_channels=[16, 32, 64, 128]", ("d_channels", [16, 32, 64, 128])),
    ("teacher=none", ("teacher", "none")),
    ("checkpoint-every=7", ("checkpoint_every", 7)),
])
def test_parse_option(text, expected):
    assert TrainConfig.parse_option(text) == expected
    name, value = expected
    assert getattr(TrainConfig().replace(**{name: value}), name) == (
        tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize("text, message", [
    ("aug_p", "NAME=VALUE"),
    ("=3", "NAME=VALUE"),
    ("no_such=1", "unknown training option 'no_such'"),
    ("extra={}", "unknown training option"),
    ("steps=1.5", "steps must be int"),
    ("spectral_norm=1", "spectral_norm must be bool"),
    ("aug_p=high", "aug_p must be float"),
    ("d_channels=[16, true]", "d_channels must be tuple"),
])
def test_parse_option_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.parse_option(text)


def test_cuda_graph_is_on_by_default_and_compile_may_be_asked_for_beside_it():
    assert TrainConfig().cuda_graph
    assert TrainConfig(compile=True).compile  # compile then replaces the captured step


def test_classifier_jitter_is_on_for_new_runs_and_off_for_runs_saved_before_it() -> None:
    assert TrainConfig().classifier_jitter is True
    saved = TrainConfig().to_dict()
    del saved["classifier_jitter"]
    assert TrainConfig.from_dict(saved).classifier_jitter is False
    assert TrainConfig.from_dict(TrainConfig().to_dict()).classifier_jitter is True
