"""Options for running a sweep at scale: the backend (serial or Ray) and the resumable cache.

``--cache DIR`` defaults to ``OUT/.quantlens-cache``: progress is saved there after every
batch (every task with Ray), a rerun of the same command resumes, and the directory is
removed when the sweep finishes. ``--no-cache`` turns it off; ``--fresh`` discards it first.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_scale_args", "scale_kwargs", "DEFAULT_CACHE"]

DEFAULT_CACHE = ".quantlens-cache"


def add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale and resume")
    g.add_argument("--backend", default="serial", choices=["serial", "ray"], help="serial (default) or ray")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 (default: a new local Ray)")
    g.add_argument("--ray-groups", type=int, default=4, metavar="N", help="Ray: layer groups (default 4)")
    g.add_argument("--shard-batches", type=int, default=1, metavar="N", help="Ray: batches per task (default 1)")
    g.add_argument("--ray-threads", type=int, default=None, metavar="N",
                   help="Ray: torch threads (and CPUs) per task (default: as many as this process uses)")
    g.add_argument("--cache", default=None, metavar="DIR", help=f"resumable progress (default: OUT/{DEFAULT_CACHE})")
    g.add_argument("--no-cache", action="store_true", help="do not save progress")
    g.add_argument("--fresh", action="store_true", help="discard a cached partial run and start over")


def scale_kwargs(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`quantlens.analyze` from the parsed options."""
    from quantlens.errors import QuantlensError
    from quantlens.parallel import make_executor

    if args.no_cache and args.cache:
        raise QuantlensError("--cache and --no-cache contradict each other; give one")
    if args.backend == "ray":
        backend: Any = make_executor("ray", args.address, groups=args.ray_groups, shard_batches=args.shard_batches,
                                 threads=args.ray_threads)
        address = None
    else:
        backend, address = "serial", args.address
    cache = None if args.no_cache else (args.cache or str(out / DEFAULT_CACHE))
    return {"backend": backend, "address": address, "cache": cache, "fresh": args.fresh}
