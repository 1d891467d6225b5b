"""Shared fixtures: tiny data sets and tiny, quickly trained checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (see below)

from napari_atagan.gan.config import TrainConfig

# torchvision pulls in triton, whose bundled LLVM crashes when it is loaded after
# a software OpenGL driver (Mesa llvmpipe under Xvfb) has loaded its own: load it
# before any test opens a napari window. The demo does the same by running the
# engine before it opens napari.

# The test models are tiny: one thread is fastest and keeps timings steady when
# the two cores of a small machine are shared with the GUI tests' X server.
torch.set_num_threads(1)


def tiny_config(**changes) -> TrainConfig:
    """A 16x16 model small enough to train a few steps in well under a second."""
    base = dict(image_size=16, z_dim=8, g_channels=(16, 8), d_channels=(8, 16), batch_size=8,
                steps=6, device="cpu", log_every=1, sample_every=3, checkpoint_every=1000,
                aug_translate=3.0, classifier_epochs=1)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_data():
    """24 simulated cells of 3 patterns at 16x16, with masks and labels."""
    from napari_atagan.data import from_arrays
    from napari_atagan.simulate import simulate_crops

    crops = simulate_crops(24, size=32, patterns=("Homogeneous", "NuMem", "Centromere"), seed=3)
    names = list(crops.patterns)
    return from_arrays(crops.images, crops.masks, [names[i] for i in crops.labels],
                       image_size=16)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data):
    """A checkpoint of a tiny conditional model trained for 6 steps with the mask teacher."""
    from napari_atagan.gan.training import run_to_end, train

    out = tmp_path_factory.mktemp("tiny_run")
    return run_to_end(train(tiny_config(), tiny_data, out)).checkpoint


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def errors():
    """Error notifications shown during the test (napari's notification manager)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    def new():
        return [str(r.message) for r in notification_manager.records[start:]
                if str(r.severity).lower().endswith("error")]

    return new
