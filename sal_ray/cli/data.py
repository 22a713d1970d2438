"""`sal-ray data list` and `sal-ray data prepare NAME...`.

`register(subparsers)` adds the `data` group to the main CLI's subparsers;
each leaf sets `func`, which takes the parsed args and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..data.loading import DataError, describe_source, load, status
from ..data.registry import DATASETS_INFO


def register(subparsers) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="list, fetch and preprocess the benchmark datasets")
    sub = data.add_subparsers(dest="data_command", metavar="{list,prepare}")
    sub.required = True

    lst = sub.add_parser("list", help="the ten datasets and whether each is on disk")
    lst.add_argument("--root", default=None, help="data root (default: $SAL_RAY_DATA, "
                     "else ~/.cache/sal_ray/data)")
    lst.set_defaults(func=cmd_list)

    prep = sub.add_parser("prepare", help="download where possible, preprocess, cache and "
                          "check the sample counts against the spec")
    prep.add_argument("names", nargs="+", metavar="NAME",
                      help=f"dataset names, or 'all': {', '.join(DATASETS_INFO)}")
    prep.add_argument("--root", default=None, help="data root")
    prep.add_argument("--download", action="store_true", help="fetch missing files")
    prep.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                      help="skip comparing files with the official release's MD5")
    prep.add_argument("--expect", action="append", default=[], metavar="NAME=COUNT",
                      help="expected sample count instead of the spec's (tests, subsets)")
    prep.set_defaults(func=cmd_prepare)
    return data


def cmd_list(args, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if args.root is not None and not Path(args.root).expanduser().is_dir():
        # a typo would otherwise list every dataset as missing
        print(f"error: option 'root': {args.root} is not a folder", file=err)
        return 2
    rows = [("name", "classes", "samples", "input", "split", "on disk")]
    for name, meta in DATASETS_INFO.items():
        rows.append((name, str(meta.n_classes), f"{meta.n_samples:,}", str(meta.input_dim),
                     "official" if meta.has_official_split else "80/20", status(name, args.root)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    return 0


def _parse_expect(items: list[str]) -> dict[str, int]:
    expect = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or name not in DATASETS_INFO or not count.strip().isdigit():
            raise DataError(f"--expect takes NAME=COUNT with a known dataset name; got {item!r}")
        expect[name] = int(count)
    return expect


def cmd_prepare(args, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        expect = _parse_expect(args.expect)
        names = list(DATASETS_INFO) if args.names == ["all"] else args.names
        for name in names:
            if name not in DATASETS_INFO:
                raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS_INFO)}")
    except DataError as exc:
        print(f"error: {exc}", file=err)
        return 2
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            s = load(name, root=args.root, download=args.download,
                     expected_samples=expect.get(name), verify_md5=args.verify_md5)
        except DataError as exc:
            failed.append(name)
            print(f"FAILED {name}: {exc}", file=err)
            continue
        print(f"ok {name}: {s.n_samples:,} samples (train {len(s.y_train):,}, "
              f"val {len(s.y_val):,}), input {s.input_dim}, {s.n_classes} classes, "
              f"{time.perf_counter() - t0:.1f} s, {describe_source(name, args.root)}", file=out)
    if failed:
        print(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}", file=err)
        return 1
    return 0
