"""``python -m mindswin.pretrained``: list the published weights; ``--markdown`` prints the README's table."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import PRETRAINED, markdown_table
from .download import cached_path, default_cache_dir


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindswin.pretrained",
                                     description="Published Swin V2 weights that pretrained=True can load")
    parser.add_argument("--markdown", action="store_true", help="print the README's table (generated, not edited)")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    print(f"cache: {default_cache_dir()}")
    for weights in PRETRAINED:
        for file in weights.files:
            state = "cached" if __import__("os").path.exists(cached_path(file)) else "-"
            print(f"{weights.name:52s} {file.source:9s} {state:7s} {file.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
