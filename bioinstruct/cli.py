"""The ``bioinstruct`` command: one verb per pipeline stage (bioinstruct.stages), and the tools.

    bioinstruct quickstart                       # the whole pipeline on CPU, tiny model, offline
    bioinstruct doctor                           # what this machine offers
    bioinstruct <verb> --help                    # inputs, outputs and config of a verb

Stage verbs share the config syntax: ``--config FILE.yaml`` then dotted
``key=value`` overrides (``lora.r=16 data.max_length=1024``); ``--print-config``
shows the resolved config without running anything.

Exit status: 0 done, 2 bad input (one line saying what and where; a path that cannot be read
or written counts), 75 stopped by a signal after saving (run the same command again), 1 an
unexpected error: one line, and ``--debug`` (or BIOINSTRUCT_DEBUG=1) shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

from . import __version__
from .errors import UserError
from .stages.pipeline import PIPELINE


@dataclasses.dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    module: str  # with __doc__ (the verb's --help), add_arguments(parser) and main(args)


# The verbs that are no stage of the pipeline; the stages' verbs come from the registry.
TOOLS = [
    Verb("launch", "submit a sweep to Slurm (or run it locally) with submitit", module="bioinstruct.launch.submit"),
    Verb("status", "per-task state of a launched sweep", module="bioinstruct.launch.status"),
    Verb("quickstart", "the whole pipeline on CPU with a tiny model, offline, in minutes",
         module="bioinstruct.quickstart"),
    Verb("doctor", "what this machine offers: torch, CUDA, DeepSpeed, Slurm, Apptainer, API key",
         module="bioinstruct.doctor"),
]
VERBS = [Verb(s.cli_verb, s.summary, s.module) for s in PIPELINE] + TOOLS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioinstruct",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bioinstruct {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs (pipeline order)")
    for verb in VERBS:
        module = importlib.import_module(verb.module)
        p = sub.add_parser(verb.name, help=verb.summary, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true",
                       help="show the traceback of an unexpected error (also BIOINSTRUCT_DEBUG=1)")
        p.set_defaults(_main=module.main)
    return parser


def _quiet_deepspeed_on_cpu() -> None:
    # Without a GPU DeepSpeed guesses its accelerator and prints a warning on stdout
    # (transformers imports it when saving a model); tell it instead.
    if "DS_ACCELERATOR" not in os.environ and not any(
            os.path.exists(dev) for dev in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")):
        os.environ["DS_ACCELERATOR"] = "cpu"


def _debug(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("BIOINSTRUCT_DEBUG") == "1"


class _QuietWhenClosed:
    """stdout that goes quiet once its reader has gone (`bioinstruct launch ... | head -2`):
    the command finishes its work and prints nothing more. Ending at the first line that finds
    the pipe closed would stop a launch between two submissions."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        # What is still buffered, and all that follows, goes to /dev/null (also at exit).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _QuietWhenClosed(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
        sys.stdout = stdout


def _main(argv: list[str] | None) -> int:
    _quiet_deepspeed_on_cpu()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse hands key=value overrides written after an option (--in X lora.r=16) back
    # as unknown: they are overrides all the same.
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return args._main(args) or 0
    except UserError as e:
        print(f"bioinstruct {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path that does not exist, cannot be written, is a file where a folder is needed:
        # the user's to fix, and the OS names the path.
        if _debug(args):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"bioinstruct {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Exception as e:
        if _debug(args):
            raise
        message = " ".join(str(e).split()) or "(no message)"
        print(f"bioinstruct {args.verb}: unexpected error: {type(e).__name__}: {message} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
