"""What the figure tests share: the figures the plot functions draw, kept for the test to read."""

import matplotlib.pyplot as plt
import pytest

import cnnlab.viz.common as common

# The modules that save figures, each through the ``save`` it imported from cnnlab.viz.common.
PLOTTING_MODULES = ("cnnlab.viz.faces", "cnnlab.viz.cifar", "cnnlab.viz.compare")


@pytest.fixture
def drawn(request, monkeypatch):
    """Each figure the plot functions save, in order: ``drawn[-1]`` is the last one.

    They are still written, unless the test module sets ``DRAW_ONLY = True``:
    then each is drawn on its own canvas instead, and closed after the test.
    (``savefig`` at the PNG's dpi leaves each text holding a renderer of that
    dpi, so extents read after it would mix two scales.)
    """
    figures = []
    draw_only = getattr(request.module, "DRAW_ONLY", False)
    real = common.save

    def keep(fig, path):
        figures.append(fig)
        if draw_only:
            fig.canvas.draw()
            return path
        return real(fig, path)

    for module in PLOTTING_MODULES:
        monkeypatch.setattr(f"{module}.save", keep)
    yield figures
    if draw_only:
        for fig in figures:
            plt.close(fig)
