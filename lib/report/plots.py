"""Plot setup shared by the notebooks: one renderer that embeds figures in HTML, one look."""
from __future__ import annotations

from lib.emotions import EMOTIONS

__all__ = ["setup_plotly", "EMOTION_COLORS", "emotion_order"]

EMOTION_COLORS = {"gratitude": "#2a9d8f", "anger": "#e63946", "apology": "#6a4c93", "neutral": "#8d99ae"}


def setup_plotly() -> None:
    """Render figures interactively in JupyterLab and inline plotly.js for nbconvert HTML.

    Under papermill the default renderer (plotly_mimetype) leaves figures out of the HTML;
    adding ``notebook`` embeds them, with plotly.js included once per notebook.
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"
    pio.templates.default = "plotly_white"


def emotion_order(present) -> list[str]:
    """Emotions in the project's canonical order, restricted to those ``present``."""
    return [e for e in EMOTIONS if e in set(present)]
