"""Explanation reports that grow finer with every label and fine-tune; HTML and netCDF export."""
from .build import Report, report

__all__ = ["Report", "report"]
