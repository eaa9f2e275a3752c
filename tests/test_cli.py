"""The console script, run as a user would."""
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
