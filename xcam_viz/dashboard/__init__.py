"""The dashboard: Panel + HoloViews components composed into `Dashboard` (nothing in the core imports it)."""
from . import transport
from .dashboard import TABS, Dashboard
from .maps import MapRequest, MapResult
from .workbench import Workbench

transport.patch()               # Panel 1.9.4 leaves a patch queued during a write unsent (transport.py)

__all__ = ["TABS", "Dashboard", "MapRequest", "MapResult", "Workbench"]
