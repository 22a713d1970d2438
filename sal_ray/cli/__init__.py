"""`sal-ray`: the command line. Only entry points import this package.

    sal-ray train --method sal --dataset digits --n-areas 16 --epochs 25
    sal-ray params --arch residual --depth 64 --width 4096 --n-areas 4 --routed hidden
    sal-ray data list | data prepare NAME...
    sal-ray report ... | ui ...

Bad input never shows a stack trace: every command checks its input before any
work and exits with status 2 and one line, `PROG: error: option 'NAME': ...`.
One module per subcommand group: `train` (train, params), `data`, `report`, `ui`.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from ..tracking.store import redact
from . import data, report, train, ui


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sal-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, data, report, ui):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as err:
        # ConfigError and DataError name the option or dataset; no stack trace for bad input
        print(f"sal-ray: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sal-ray: interrupted", file=sys.stderr)
        return 130
