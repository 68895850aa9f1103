"""`sparegrid`: one command, a group of subcommands per role."""

import os

# gRPC's own INFO lines (TLS handshakes that failed, GOAWAYs) reach stderr otherwise, raw,
# beside the command's own words on what went wrong; read when grpc is first imported.
# GRPC_VERBOSITY=INFO (or DEBUG) brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import importlib
import sys
from importlib import metadata
from typing import Any

try:  # the SDK, grpc and rich load here: a Ctrl-C meanwhile stops quietly, not a traceback
    from sparegrid.cli import account, admin, common, demo, job, output
except KeyboardInterrupt:
    sys.exit(130)

DAEMON_GROUPS = (
    ("coordinator", "sparegrid.coordinator.cli", "run the coordinator"),
    ("worker", "sparegrid.worker.cli", "run a worker on this machine's GPUs"),
)


def _version() -> str:
    try:
        return metadata.version("sparegrid")
    except metadata.PackageNotFoundError:
        return "unknown"


def _register_daemon(subparsers: Any, name: str, module: str, text: str) -> None:
    """The coordinator's or worker's own group; a stub saying why when it cannot load."""
    try:
        importlib.import_module(module).register(subparsers)
    except ImportError as exc:
        stub = subparsers.add_parser(name, help=f"{text} (unavailable: {exc})")
        stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        stub.set_defaults(func=lambda _args, exc=exc: _unavailable(name, module, exc))


def _unavailable(name: str, module: str, exc: ImportError) -> int:
    output.error(f"`sparegrid {name}` is unavailable: cannot import {module}: {exc}")
    return 1


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, measuring subcommand names at the indent they are shown at.

    Python 3.11 measures them one level too far left, so a long one (`coordinator`) was put
    on a line of its own with its help below.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.help is argparse.SUPPRESS or not isinstance(action, argparse._SubParsersAction):
            return
        names = [self._format_action_invocation(a) for a in action._get_subactions()]
        if names:
            indent = self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, indent + max(map(len, names)))


class Parser(argparse.ArgumentParser):
    """Every subcommand's parser is one of these (argparse makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        """Records the innermost parser that ran (the command's), so `main` can refuse an
        unknown flag with that command's usage rather than the top level's."""
        namespace, extras = super().parse_known_args(*args, **kwargs)
        if not hasattr(namespace, LEAF):
            setattr(namespace, LEAF, self)
        return namespace, extras


LEAF = "_sparegrid_parser"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparegrid",
        description="Sparegrid: a decentralized GPU network.",
        epilog="Each command takes --help. The coordinator address comes from --coordinator "
        "or $SPAREGRID_COORDINATOR; the API key from $SPAREGRID_API_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"sparegrid {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in DAEMON_GROUPS:
        _register_daemon(subparsers, name, module, text)
    job.register(subparsers)
    account.register(subparsers)
    admin.register(subparsers)
    demo.register(subparsers)
    return parser


def _flags_first(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuses flags written before the command (`sparegrid --coordinator X job list`),
    which argparse took for a command named X, with the line as it is meant."""
    if not argv or not argv[0].startswith("-") or argv[0] in ("-h", "--help", "--version"):
        return
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    at = next((i for i, word in enumerate(argv) if word in commands), None)
    if at is None:
        return
    words = [argv[at]]
    for word in argv[at + 1 :]:  # the command's own words: `job list`, `admin jobs list`
        if word.startswith("-"):
            break
        words.append(word)
    rest = argv[at + len(words) :]
    meant = " ".join(["sparegrid", *words, *argv[:at], *rest])
    parser.error(f"flags go after the command: {meant}")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports the coordinator's and worker's groups
    except KeyboardInterrupt:  # Ctrl-C while the command starts: 130, as later, no traceback
        return 130
    _flags_first(parser, sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = getattr(args, LEAF, parser)
    delattr(args, LEAF)
    if extras:  # argparse's own parse_args would show the top level's usage for these
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    handler: common.Handler = args.func
    return common.run(handler, args)


if __name__ == "__main__":
    sys.exit(main())
