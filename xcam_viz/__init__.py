"""xcam-viz: explain, correct and fine-tune image CNNs."""
__version__ = "0.1.0"

from . import data, models  # noqa: E402
