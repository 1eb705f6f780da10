"""``python -m animate.train run ...``: the ``animate train`` commands, for ``accelerate launch -m animate.train``."""

from __future__ import annotations

import sys

from animate.cli import run


def main() -> None:
    sys.exit(run(["train", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
