"""The console script, run as a user would."""
import os
import subprocess
import sys
from pathlib import Path


def test_demo_command_reports_what_the_model_learned():
    exe = Path(sys.executable).with_name("xcam-viz")
    out = subprocess.run([str(exe), "demo", "--quiet", "--no-serve"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "test" in out.stdout and "flipped" in out.stdout and "block3" in out.stdout
    assert "%" in out.stdout


def test_unknown_command_fails_with_usage():
    exe = Path(sys.executable).with_name("xcam-viz")
    out = subprocess.run([str(exe), "fly"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "invalid choice" in out.stderr


def test_serving_commands_start_again_with_the_system_allocator(monkeypatch):
    from xcam_viz import cli

    started = []
    monkeypatch.setattr(cli.os, "execve", lambda exe, args, env: started.append((exe, args, env["PYTHONMALLOC"])))
    monkeypatch.setattr(cli.sys, "orig_argv", ["python3", "-m", "xcam_viz.cli", "serve", "--port", "5007"])
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    cli.returnable_memory()
    assert started == [(sys.executable, [sys.executable, "-m", "xcam_viz.cli", "serve", "--port", "5007"], "malloc")]
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")                 # the user's choice stands
    cli.returnable_memory()
    assert len(started) == 1


def test_the_restarted_process_runs_with_the_system_allocator():
    code = "import os; from xcam_viz import cli; cli.returnable_memory(); print(os.environ['PYTHONMALLOC'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "malloc", out.stderr
