"""The parser's building blocks: one-line usage errors, help that shows defaults, shared options.

Each command gets only the options it uses: the client commands `client_options`,
the broker `bind_and_data`, and so on; nothing is added to every command but -v.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from shared.client import CONNECT_TIMEOUT
from shared.config import default_data_dir, default_endpoint

DEFAULT_TIMEOUT = 15.0  # seconds a client command waits for each reply


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default X)` to an option's help unless it says its default already, or has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default == argparse.SUPPRESS or default == [] or default == ""
                or isinstance(action, argparse._HelpAction | argparse._VersionAction)):
            return text
        return f"{text} (default %(default)s)"


if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[Any]
else:
    Subparsers = argparse._SubParsersAction


def add_command(sub: Subparsers, name: str, help: str, description: str | None = None,
                **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand with a description (its help, unless given), the help formatter and -v."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description or _sentence(help),
                                                     formatter_class=HelpFormatter, **kwargs)
    verbose(parser)
    return parser


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def verbose(parser: argparse.ArgumentParser, **extra: Any) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (debug messages)", **extra)


def client_options(parser: argparse.ArgumentParser, *, json: bool = True, timeout: bool = True) -> None:
    """--connect, --timeout, --key, --server-key (and --json): what a command that talks to the broker takes."""
    parser.add_argument("--connect", default=default_endpoint(), metavar="ENDPOINT",
                        help="the broker: tcp://HOST:PORT or ipc://PATH ($CUTQ_CONNECT; default %(default)s)")
    if timeout:
        parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                            help="how long to wait for each reply of the broker (image transfers get at least "
                                 f"60 s); a broker that is not there is reported within {CONNECT_TIMEOUT:g} s, or "
                                 "this if shorter (default %(default)g)")
    credentials(parser)
    if json:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", metavar="FILE",
                        help="this peer's secret CURVE certificate, when the broker has keys ($CUTQ_KEY)")
    parser.add_argument("--server-key", metavar="FILE",
                        help="the broker's public CURVE certificate ($CUTQ_SERVER_KEY)")


def bind_and_data(parser: argparse.ArgumentParser) -> None:
    """--bind and --data, the same for `cutq broker` and `cutq up`."""
    parser.add_argument("--bind", default=default_endpoint(), metavar="ENDPOINT",
                        help="where the broker listens: tcp://HOST:PORT or ipc://PATH "
                             "($CUTQ_CONNECT; default %(default)s)")
    data_dir(parser, "the broker's data directory: queue, images, keys")


def data_dir(parser: argparse.ArgumentParser, what: str = "the broker's data directory") -> None:
    parser.add_argument("--data", default=str(default_data_dir()), metavar="DIR",
                        help=f"{what} ($CUTQ_DATA; default %(default)s)")


def job_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job id, or any unique prefix of one")


def late_copy(source: argparse.ArgumentParser, dest: argparse.ArgumentParser,
              skip: Iterable[str] = ("-h",)) -> None:
    """Give `dest` (a nested action such as `tenants set`) the options of `source` too, so they may
    come after the action's own; SUPPRESS keeps one given before the action from being reset."""
    skipped = set(skip)
    for action in source._actions:
        if not action.option_strings or skipped & set(action.option_strings):
            continue
        extra: dict[str, Any] = {"type": action.type} if action.type else {}
        if action.metavar is not None:
            extra["metavar"] = action.metavar
        if action.choices is not None:
            extra["choices"] = action.choices
        text = action.help
        if text and "%(" in text:  # its default, said now: the copy's own default is SUPPRESS
            text = (text % {**vars(action), "prog": source.prog}).replace("%", "%%")
        dest.add_argument(*action.option_strings, dest=action.dest, action=type(action),
                          help=text, default=argparse.SUPPRESS, **extra)


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {n}")
    return n


def positive_float(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return n
