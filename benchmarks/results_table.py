"""The one way benchmarks publish: print the markdown and write it to benchmarks/results/<name>.md."""
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def write_result(name: str, text: str) -> Path:
    """Print `text` and write it to benchmarks/results/`name`.md; returns the path."""
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path
