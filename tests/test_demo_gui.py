"""The main job as a user sees it: napari with the results and the three widgets."""

import numpy as np
import pytest

from napari_atagan import default_model_path

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def result():
    if default_model_path() is None:
        pytest.fail("the shipped default model sample_data/default_model.safetensors is missing")
    from napari_atagan.demo import run_pipeline

    return run_pipeline(n_per_pattern=2, device="cpu")


def test_main_job_in_napari(make_napari_viewer, qtbot, tmp_path, result):
    from skimage.io import imsave

    from napari_atagan.demo import populate_viewer

    viewer = make_napari_viewer(show=True)
    populate_viewer(viewer, result)
    names = [layer.name for layer in viewer.layers]
    assert names == ["HEp-2 slide (simulated)", "HEp-2 slide (simulated) attention",
                     "HEp-2 slide (simulated) cells", "ground truth", "synthetic cells",
                     "synthetic attention", "synthetic masks"]
    att = viewer.layers["HEp-2 slide (simulated) attention"].data
    assert att.dtype == np.float32 and att.shape == (1024, 1024) and att.min() >= 0
    cells = viewer.layers["HEp-2 slide (simulated) cells"].data
    assert cells.dtype in (np.uint16, np.uint32) and cells.max() > 0
    synth = viewer.layers["synthetic cells"].data
    assert synth.shape == (12, 64, 64)  # 2 per pattern, 6 patterns
    assert viewer.layers["synthetic masks"].data.shape == synth.shape
    docked = set(viewer.window.dock_widgets)
    assert {"Attention (napari-atagan)", "Synthesize (napari-atagan)",
            "Train (napari-atagan)"} <= docked
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False)
    imsave(tmp_path / "main_job.png", shot, check_contrast=False)
    assert shot.std() > 10
