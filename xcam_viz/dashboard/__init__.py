"""The dashboard: Panel + HoloViews components composed into `Dashboard` (nothing in the core imports it)."""
from .dashboard import TABS, Dashboard
from .maps import MapRequest, MapResult
from .workbench import Workbench

__all__ = ["TABS", "Dashboard", "MapRequest", "MapResult", "Workbench"]
