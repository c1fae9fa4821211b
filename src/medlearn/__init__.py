"""medlearn: data-efficient medical-imaging methods as tested, scalable pipelines.

Tasks: ``mama`` (mammography vision-language pre-training), ``mrsi`` (multi-scale MRSI
super-resolution with adjustable sharpness) and ``itl`` (incremental-transfer learning for
multi-site segmentation).  Importing the package has no side effects.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
