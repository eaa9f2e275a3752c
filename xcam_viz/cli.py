"""The `xcam-viz` command line: demo, serve, explain, finetune."""
from __future__ import annotations

import argparse
import os
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import summary, volume_summary
    print((volume_summary if args.volumes else summary)(progress=not args.quiet), flush=True)
    if args.no_serve:
        return 0
    from .dashboard.app import serve
    print(f"serving the {'3-D ' * args.volumes}demo dashboard at http://{args.address}:{args.port} (Ctrl+C stops it)",
          flush=True)
    serve(model=None, data=None, feedback=None, port=args.port, address=args.address, show=args.show,
          websocket_origin=None, demo="volumes" if args.volumes else "demo")
    return 0


def _examples(args: argparse.Namespace) -> int:
    from .data.examples import listing
    print(listing(), flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .dashboard.app import serve
    try:
        serve(model=args.model, data=args.data, feedback=args.feedback, port=args.port, address=args.address,
              show=args.show, websocket_origin=args.allow_websocket_origin,
              basic_auth=args.basic_auth or os.environ.get("XCAM_VIZ_PASSWORD"), size=args.size and tuple(args.size),
              channels=args.channels, max_upload_mb=args.max_upload_mb, window=args.window,
              workspaces=args.workspaces, workspace_dir=args.workspace_dir, max_runs=args.max_runs,
              instructors=args.instructor or ["instructor"])
    except (ValueError, FileNotFoundError) as err:          # the model, data or settings do not fit: say why
        raise SystemExit(f"xcam-viz serve: {err}") from None
    return 0


def _explain(args: argparse.Namespace) -> int:
    import contextlib

    from .demo import CHECKPOINT_NAME, cache_dir, demo_model
    from .explain.batch import DataSpec, explain_dataset
    from .explain.distributed import dask_client
    if args.model == "demo":
        demo_model(progress=not args.quiet)          # makes sure the demo checkpoint exists
    checkpoint = cache_dir() / CHECKPOINT_NAME if args.model == "demo" else args.model
    target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    distributed = args.workers is not None or args.scheduler is not None
    with dask_client(args.workers, args.scheduler) if distributed else contextlib.nullcontext() as client:
        path = explain_dataset(checkpoint, DataSpec(args.data, args.split), args.out,
                               methods=args.methods.split(","), layers=args.layers and args.layers.split(","),
                               target=target, batch_size=args.batch_size, progress=not args.quiet,
                               overwrite=args.overwrite, client=client)
    print(f"CAMs written to {path}", flush=True)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import load_data
    from .data.examples import EXAMPLES
    from .data.loading import model_input
    from .demo import demo_model
    from .feedback import FeedbackStore
    from .finetune import finetune
    from .models import load
    if not Path(args.feedback).exists():
        raise SystemExit(f"feedback database {args.feedback} does not exist; annotate images in the dashboard "
                         "or write one with xv.FeedbackStore / xv.feedback.simulate(..., store=...)")
    model = None if args.base_version else demo_model(progress=False) if args.model == "demo" else load(args.model)
    takes = model_input(model)[0] if model is not None else None
    channels = args.channels or (takes if takes in (1, 3) else None)
    size = args.size and tuple(args.size)
    store = FeedbackStore(args.feedback)
    evals = args.eval if args.eval is not None else [s for s in EXAMPLES[args.data].splits if s != args.split] \
        if args.data in EXAMPLES else []
    versions = args.versions or Path(args.feedback).with_name(f"{Path(args.feedback).stem}-versions")
    result = finetune(model, load_data(args.data, args.split, size=size, channels=channels), feedback=store,
                      layer=args.layer, lam=args.lam, epochs=args.epochs, lr=args.lr, strategy=args.strategy,
                      base_version=args.base_version, versions_dir=versions,
                      eval_data={s: load_data(args.data, s, size=size, channels=channels) for s in evals})
    print(result.summary())
    print(f"saved {result.version} (from {result.base_version}) in {result.versions.directory}", flush=True)
    return 0


def _megabytes(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a size in MB above 0, e.g. 10 (got {text})")
    return value


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, e.g. 2 (got {text})")
    return int(text)


def _fitting(command: argparse.ArgumentParser) -> None:
    """--size and --channels: what images given as paths are fitted to."""
    command.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                         help="fit the images to this input size (default: the model's own, else the images' "
                              "own up to 224 px on the longer side)")
    command.add_argument("--channels", type=int, choices=(1, 3),
                         help="1: grey, 3: colour; grey images are replicated for a colour model, colour ones "
                              "converted to luminance for a grey one (default: what the model takes)")


def parser() -> argparse.ArgumentParser:
    from .data.examples import EXAMPLES
    from .data.windows import WINDOWS
    from .finetune.strategies import DEFAULTS, STRATEGIES

    named = "a named example set (" + ", ".join(EXAMPLES) + "; see `xcam-viz examples`)"

    p = argparse.ArgumentParser(prog="xcam-viz", description="Explain, correct and fine-tune image CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load (or train) the demo model, show what it learned, serve the dashboard")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--no-serve", action="store_true", help="only print what the demo model learned")
    demo.add_argument("--volumes", action="store_true",
                      help="the 3-D demo: smallcnn3d on synthetic chest CT volumes, shown as three planes with "
                           "window/level presets and the map's hottest point")
    demo.add_argument("--port", type=int, default=5006)
    demo.add_argument("--address", default="127.0.0.1", help="interface to bind (default: this machine only)")
    demo.add_argument("--show", action="store_true", help="open a browser tab")
    demo.set_defaults(run=_demo)
    examples = sub.add_parser("examples", help="list the named example data sets (usable as --data NAME)")
    examples.set_defaults(run=_examples)
    serve = sub.add_parser("serve", help="serve the dashboard (the demo unless --model / --data are given)")
    serve.add_argument("--model", help="checkpoint written by xv.models.save, or a zoo name (random weights)")
    serve.add_argument("--data", action="append", metavar="[NAME=]PATH",
                       help="image folder, ISIC-style CSV, MedMNIST .npz, NIfTI / DICOM files or folders, or a CSV "
                            "manifest (path,label) of NIfTI files; repeat for several splits (one unnamed folder is "
                            "the split 'train'; an unnamed .npz gives its train, val, test)")
    serve.add_argument("--window", choices=sorted(WINDOWS),
                       help="the display window NIfTI / DICOM volumes are read through (default: each volume's "
                            "min..max); the dashboard offers the CT presets on top of it")
    serve.add_argument("--feedback", help="feedback database (SQLite); default: a demo store in the cache folder")
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1", help="interface to bind (default: this machine only)")
    serve.add_argument("--allow-websocket-origin", action="append", metavar="HOST[:PORT]",
                       help="extra origins allowed to connect (needed with --address 0.0.0.0)")
    serve.add_argument("--show", action="store_true", help="open a browser tab")
    serve.add_argument("--basic-auth", metavar="PASSWORD_OR_FILE",
                       help="ask for a password (or a JSON file of {user: password}) on a login page; "
                            "prefer the environment variable XCAM_VIZ_PASSWORD (not shown in the process list)")
    serve.add_argument("--max-upload-mb", type=_megabytes, default=50.0,       # dashboard.upload.MAX_UPLOAD_MB
                       help="largest image file users may upload (default: 50 MB, room for a 4096×3328 scan)")
    serve.add_argument("--workspaces", choices=("shared", "per-user"), default="shared",
                       help="shared: one feedback store and model lineage for everyone (a team annotating "
                            "together); per-user: each participant their own, from the same v0 (a workshop; "
                            "named by --basic-auth, else an anonymous name per browser). See docs/workshop.md")
    serve.add_argument("--workspace-dir", metavar="DIR",
                       help="folder of the per-user workspaces (default: <feedback database>-workspaces/ beside "
                            "it); reuse it after a restart, remove it to start again")
    serve.add_argument("--max-runs", type=_at_least_one,
                       help="fine-tuning runs at once; the others wait in line (default: the number of cores "
                            "minus one, at least 1)")
    serve.add_argument("--instructor", action="append", metavar="USER",
                       help="a user of the --basic-auth file who may open /instructor (repeat for several; "
                            "default: instructor); the link the server prints opens it too")
    _fitting(serve)
    serve.set_defaults(run=_serve)
    explain = sub.add_parser("explain", help="CAMs of a whole data set into a .zarr store or .nc file (resumable)")
    explain.add_argument("--data", required=True,
                         help=f"{named}, an image folder, an ISIC-style CSV, a MedMNIST .npz or a zarr store (lazy)")
    explain.add_argument("--split", default="test", help="split of the example set / MedMNIST data (default: test)")
    explain.add_argument("--model", required=True, help="checkpoint written by xv.models.save, or 'demo'")
    explain.add_argument("--methods", default="gradcam", help="comma-separated, e.g. gradcam,hirescam")
    explain.add_argument("--layers", default=None,
                         help="comma-separated layer names, e.g. block3,block4 (default: the model's default layer)")
    explain.add_argument("--target", default="predicted", help="'predicted', 'label' or a class index")
    explain.add_argument("--out", required=True, help="output path ending in .zarr or .nc")
    explain.add_argument("--batch-size", type=int, default=32)
    explain.add_argument("--overwrite", action="store_true", help="replace an output of a different run")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    cluster = explain.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, metavar="N",
                         help="run the batches on a local Dask cluster of N single-threaded worker processes")
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the batches on the Dask cluster at ADDRESS, e.g. tcp://host:8786 "
                              "(shared filesystem)")
    explain.set_defaults(run=_explain)
    tune = sub.add_parser("finetune", help="fine-tune a model on saved explanation feedback into a new model version")
    tune.add_argument("--model", default="demo", help="checkpoint written by xv.models.save, or 'demo'")
    tune.add_argument("--base-version", help="start from this version of the registry instead of --model")
    tune.add_argument("--feedback", required=True, help="feedback database (SQLite) written by xv.FeedbackStore")
    tune.add_argument("--data", default="demo",
                      help=f"{named}, an image folder, an ISIC-style CSV, a MedMNIST .npz or a zarr store (lazy)")
    tune.add_argument("--split", default="train", help="split fine-tuned on (example set / MedMNIST; default: train)")
    tune.add_argument("--eval", action="append", metavar="SPLIT",
                      help="split scored before and after; repeat (default for an example set: its other splits)")
    tune.add_argument("--layer", help="layer whose Grad-CAM is corrected (default: the last spatial layer)")
    tune.add_argument("--strategy", default="auto",
                      help=f"auto, or names joined by + from {', '.join(STRATEGIES)} (see docs/methods.md)")
    tune.add_argument("--lam", type=float, help=f"weight of explanation-loss strategies (default {DEFAULTS['lam']})")
    tune.add_argument("--epochs", type=int, help=f"most epochs; the best is kept (default {DEFAULTS['epochs']})")
    tune.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULTS['lr']})")
    tune.add_argument("--versions", help="model version folder (default: <feedback>-versions next to the database)")
    _fitting(tune)
    tune.set_defaults(run=_finetune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None and (args.run is _serve or (args.run is _demo and not args.no_serve)):
        returnable_memory()
    return args.run(args)


def returnable_memory() -> None:
    """Start this command again (same process id) with CPython's small-object allocator off, unless
    PYTHONMALLOC is set: its arenas keep the memory of a server's closed sessions (measured in-process:
    20 dashboard sessions opened and closed left 154 MB; with glibc's malloc, which the server trims when
    sessions go, 83 MB); the dashboard's latency grows by ~7-10 % (demo rows measured side by side). Linux
    only, and only for a command line (`main()` without arguments)."""
    if os.environ.get("PYTHONMALLOC") or not sys.platform.startswith("linux"):
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "PYTHONMALLOC": "malloc"})


if __name__ == "__main__":
    sys.exit(main())
