"""The Anny body model's data cache: built once per machine (~800 MB, about 2 minutes), then loaded in seconds.

Anny builds its model data (mesh, rig, blend shapes) from its packaged assets the first time it is used and
saves it under ``$ANNY_CACHE_DIR`` (default ``~/.cache/anny``) in one folder per data version. ``make install``
builds it (``python -m animate.body.cache --build``) so that no job pays for it; the CLI says so on its own
line when a run must build it.

Whether it is built is answered without importing anny (which takes seconds): the cache folder and the data
version are read the way anny reads them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from pathlib import Path

#: The functions whose results anny caches, one ``<name>_<hash>.safetensors`` file each.
CACHED_BUILDERS = ("load_data", "build_model_data", "build_compact_model_data")
APPROX_SIZE = "~800 MB"
APPROX_TIME = "about 2 minutes"


def cache_root() -> Path:
    """Where anny keeps its cache (its own rule: ``ANNY_CACHE_DIR``, else ``~/.cache/anny``)."""
    return Path(os.environ.get("ANNY_CACHE_DIR", str(Path.home() / ".cache" / "anny")))


def data_version() -> int | None:
    """anny's ``CURRENT_DATA_VERSION``, read from its source file (no import), or None without anny."""
    spec = importlib.util.find_spec("anny")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "model_data.py"
    try:
        match = re.search(r"^CURRENT_DATA_VERSION\s*=\s*(\d+)", source.read_text(), re.M)
    except OSError:
        match = None
    if match:
        return int(match[1])
    from anny.models.model_data import CURRENT_DATA_VERSION  # the source moved: ask anny itself

    return int(CURRENT_DATA_VERSION)


def cache_dir() -> Path | None:
    version = data_version()
    return None if version is None else cache_root() / f"v{version}"


def is_built() -> bool:
    """True when every file anny caches for the current data version is there."""
    folder = cache_dir()
    if folder is None or not folder.is_dir():
        return False
    names = [p.name for p in folder.glob("*.safetensors")]
    return all(any(name.startswith(f"{builder}_") for name in names) for builder in CACHED_BUILDERS)


def build() -> float:
    """Build (or load) Anny's data now; the seconds it took."""
    from animate.body import load_anny

    start = time.perf_counter()
    load_anny()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m animate.body.cache", description="Anny body model data cache: check or build."
    )
    parser.add_argument("--build", action="store_true", help="Build it when it is not there yet.")
    args = parser.parse_args(argv)
    where = cache_dir() or cache_root()
    if is_built():
        print(f"body model data: ready in {where}")
        return 0
    if not args.build:
        print(f"body model data: not built yet ({where}); `python -m animate.body.cache --build` builds it")
        return 1
    print(
        f"body model data: building in {where} ({APPROX_SIZE}, {APPROX_TIME}, once per machine)", flush=True
    )
    from animate.cli import quiet

    quiet.install([])  # anny and warp chatter (no CUDA driver warning on a CPU machine)
    try:
        seconds = build()
    finally:
        quiet.uninstall()
    print(f"body model data: built in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
