"""The ``medseg`` command line: a thin layer over the Python API.

Each sub-command lives in its own module under :mod:`medseg.commands` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, and is imported only when used, so ``medseg evaluate`` does
not pay for importing torch. A :class:`~medseg.errors.MedsegError` becomes one line on stderr and exit code 2.

Exit codes (the same for every command): 0 everything succeeded; 1 a batch completed but some cases failed (they
are listed); 2 bad invocation or nothing could run; 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM).
SIGTERM unwinds like Ctrl-C, so temporary files are removed and nothing half-written is left.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import logging
import os
import re
import signal
import sys
import threading

from medseg import __version__
from medseg.errors import EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM, MedsegError, Terminated

#: sub-command -> (module under medseg.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a synthetic Synapse-like phantom cohort (BTCV layout)"),
    "prepare": ("prepare", "preprocess a cohort into a 2D slice cache"),
    "models": ("models", "list the model zoo"),
    "train": ("train", "train a model on a prepared slice cache"),
    "predict": ("predict", "segment CT volumes (NIfTI, TransUNet h5 or DICOM series) with a checkpoint"),
    "evaluate": ("evaluate", "per-organ Dice / HD95 / ASSD / NSD of predictions against references"),
    "run": ("run", "run a YAML pipeline"),
}


def build_parser(load_commands: "list[str] | None" = None) -> argparse.ArgumentParser:
    """The argument parser; ``load_commands`` limits which sub-command modules are imported."""
    parser = argparse.ArgumentParser(prog="medseg", description="Multi-organ segmentation of abdominal CT.")
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if load_commands is None or name in load_commands:
            module = _command_module(module_name)
            if module is not None:
                module.add_arguments(sub)
                sub.set_defaults(_run=module.run)
    return parser


def _command_module(module_name: str):
    try:
        return importlib.import_module(f"medseg.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"medseg.commands.{module_name}":
            return None
        raise


def main(argv: "list[str] | None" = None) -> int:
    """Entry point of the ``medseg`` console script; returns the exit code."""
    # OpenMP threads that spin while waiting make torch many times slower when the cores are shared with other work
    # (a data-loader process, another job); passive waiting costs little on an idle machine. Set before torch loads;
    # an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _skip_final_collection_at_exit()
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [a for a in argv if a in COMMANDS][:1]
    parser = build_parser(load_commands=chosen or [])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "_run", None):
        if args.command:
            parser.error(f"command {args.command!r} is not available in this version")
        parser.print_help()
        return 0
    previous = _raise_on_sigterm()
    try:
        return int(args._run(args) or 0)
    except MedsegError as exc:
        print(f"medseg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"medseg {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_SIGTERM if terminated else EXIT_SIGINT
    except OSError as exc:  # a file system failure the command did not foresee: still one line, no traceback
        logging.getLogger(__name__).debug("unexpected OS error", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medseg {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _skip_final_collection_at_exit() -> None:
    """At interpreter exit, freeze the objects that exist then (:func:`gc.freeze`) so that the interpreter's last
    garbage collections skip them.

    Those collections walk every object torch and numpy created and kept the process alive for about a second after
    its last output line on a loaded 2-core machine (``benchmarks/predict_startup.py``); the process is ending and
    the OS reclaims its memory. Nothing is lost: files are written and closed by the commands themselves (atomic
    renames), logging flushes in its own exit hook and the standard streams are flushed after the exit hooks.
    Registered once however often :func:`main` runs in one process.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _one_line(exc: MedsegError) -> str:
    """The error's message on one line. An error raised in a torch data-loader worker comes back with the worker's
    traceback inside its message; its last line is the original ``Type: message``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])


def _raise_terminated(signum, frame):
    raise Terminated()


def _raise_on_sigterm():
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the handler it replaced (or None)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
