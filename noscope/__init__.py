"""noscope: answer "which frames contain an X?" over fixed-camera video, fast.

Pipeline, one module each: video (decode) -> labels (reference detector) -> cheap (cheap models:
small CNNs, heads on the reference's layers) + difference -> optimizer (pick a cascade) -> cascade
(run it) -> report.
"""

__version__ = "0.1.0"

import os as _os

# FFmpeg prints its own complaints ("moov atom not found") to stderr; our errors already say
# what is wrong in one line. Set OPENCV_FFMPEG_LOGLEVEL yourself to see them.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
