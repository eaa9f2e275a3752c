"""The `xcam-viz` command line: demo (and later serve, explain, finetune)."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import summary
    print(summary(progress=not args.quiet))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xcam-viz", description="Explain, correct and fine-tune image CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load (or train) the demo model and show what it learned")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
