"""noscope: answer "which frames contain an X?" over fixed-camera video, fast.

Pipeline, one module each: video (decode) -> labels (reference detector) -> specialized +
difference (cheap models) -> optimizer (pick a cascade) -> cascade (run it) -> report.
"""

__version__ = "0.1.0"
