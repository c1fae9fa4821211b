"""The package's version and the names of its public Python API (one list, no imports)."""

__version__ = "0.1.0"

PUBLIC_API = (
    "TASKS",
    "ITLSegmenter",
    "MRSIPredictor",
    "MamaPredictor",
    "build_model",
    "configs_dir",
    "list_presets",
    "load_itl",
    "load_mama",
    "load_mrsi",
    "load_predictor",
    "load_preset",
    "train",
)
