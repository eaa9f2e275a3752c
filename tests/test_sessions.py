"""What the dashboard server keeps across sessions (`sessions.py`): one version check, the stats it serves."""
from __future__ import annotations

from types import SimpleNamespace

from xcam_viz.dashboard import sessions
from xcam_viz.dashboard.tasks import LATENCY


class Workbench:
    def __init__(self, versions):
        self.listed, self._versions = 0, versions

    @property
    def versions(self):
        self.listed += 1
        return list(self._versions)


class Dashboard:
    """What the version check reads of a session: its Workbench, its version choices, its Runner."""

    def __init__(self, workbench, shown):
        self.workbench, self.told = workbench, []
        self.selection = SimpleNamespace(param=SimpleNamespace(version=SimpleNamespace(objects=shown)),
                                         sync_version=lambda: None)
        self.runner = SimpleNamespace(soon=self.told.append)


def test_one_check_tells_only_the_sessions_whose_versions_are_out_of_date(monkeypatch):
    monkeypatch.setattr(sessions, "release_memory", lambda idle=(): released.append(len(idle)))
    watch, released = sessions.VersionWatch(), []
    shared, mine = Workbench(["v0", "v1"]), Workbench(["v0"])     # (workspaces keep their Workbenches)
    current, behind, own = Dashboard(shared, ["v0", "v1"]), Dashboard(shared, ["v0"]), Dashboard(mine, ["v0"])
    watch.add(current), watch.add(behind), watch.add(own)
    watch.check()
    assert shared.listed == 1                      # once per Workbench, however many sessions share it
    assert (current.told, behind.told, own.told) == ([], [behind.selection.sync_version], [])
    assert released == []
    del behind
    watch.check()
    assert released == [0]                         # a session has gone: its memory is handed back
    del current, own
    watch.check()
    assert released == [0, 2]                      # none left: the caches of both Workbenches go too
    for _ in range(sessions.RELEASE_CHECKS + 2):  # and again for a while (Bokeh frees documents later)
        watch.check()
    assert released == [0] + [2] * sessions.RELEASE_CHECKS


class Probe:
    seq = 7


def test_stats_give_a_sessions_probe_number_and_the_latency():
    probe = Probe()
    sessions.PROBES["abc"] = probe
    LATENCY.extend([0.1, 0.2, 0.3])
    out = sessions.stats("abc")
    assert out["seq"] == 7 and sessions.stats("gone")["seq"] is None
    assert out["latency_s"]["count"] >= 3 and 0 < out["latency_s"]["p50"] <= out["latency_s"]["p95"]
