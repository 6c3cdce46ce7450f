"""What every command shares: one-line errors, exit codes, ``--debug`` tracebacks.

Exit status (contracts.md section 5): 0 success, 1 a failure while working, 2 bad usage
or bad input. Only ``--debug`` shows a traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

from .errors import CVDVAEError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def run_command(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
                argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)  # exits with status 2 on bad usage
    try:
        return main(args) or EXIT_OK
    except CVDVAEError as err:
        return _fail(parser.prog, err, EXIT_BAD_INPUT, args.debug)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence for a command
        return _fail(parser.prog, err, EXIT_FAILURE, args.debug, hint=" (run with --debug for the traceback)")


def _fail(prog: str, err: BaseException, code: int, debug: bool, hint: str = "") -> int:
    if debug:
        traceback.print_exc()
    message = str(err).strip().replace("\n", " ") or type(err).__name__
    print(f"{prog}: error: {message}{hint}", file=sys.stderr)
    return code
