"""The dashboard: Panel + HoloViews components composed into `Dashboard` (nothing in the core imports it)."""
from .dashboard import TABS, Dashboard
from .workbench import MapRequest, MapResult, Workbench

__all__ = ["TABS", "Dashboard", "MapRequest", "MapResult", "Workbench"]
