"""Progress bars that stay out of logs: shown only on a terminal and never with --quiet."""

import sys

from tqdm import tqdm


def progress_bar(total=None, desc="", unit="frame", quiet=False):
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, leave=False)
