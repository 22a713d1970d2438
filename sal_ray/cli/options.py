"""What every `sal-ray` subcommand shares: trainer options as flags, and the
checks that refuse bad input in one line before any work."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from pathlib import Path

from ..config import DEFAULTS, HELP, Config, ConfigError, option_type, optional
from ..tracking.store import redact


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per trainer option, named after it (n_areas -> --n-areas)."""
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        kind = option_type(name)
        shown = "auto" if default is None else default
        if kind == "bool":
            parser.add_argument(flag, dest=name, default=None, metavar="{true,false}",
                                help=f"{HELP[name]} (default: {shown})")
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=kind.upper(),
                                help=f"{HELP[name]} (default: {shown})"
                                + ("; 'none' for auto" if optional(name) else ""))


def config_from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    return Config.from_flat(given)


def check_folder(option: str, path: str) -> None:
    """Raise ConfigError unless `path` is, or can be created as, a writable folder.
    Tried with a temporary folder that is removed at once: nothing is left behind."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(option, f"{path} exists and is not a folder")
    probe_in = p if p.is_dir() else p.absolute().parent
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise ConfigError(option, f"cannot create {path}: {probe_in} is not a folder")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".sal-ray-probe-", dir=probe_in))
    except OSError as e:
        raise ConfigError(option, f"cannot write {path}: {e.strerror or e} in {probe_in}") \
            from None


def refuses_bad_input(prog: str):
    """Bad input (ConfigError, the store's StoreError, DataError: ValueErrors naming
    the option) ends the command with one redacted line on stderr and status 2."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(args) -> int:
            try:
                return fn(args)
            except ValueError as err:
                print(f"{prog}: error: {redact(str(err))}", file=sys.stderr)
                return 2
        return run
    return wrap
