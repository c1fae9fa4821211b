"""Multi-scale MRSI super-resolution with metabolite and sharpness conditioning (task ``mrsi``).

Submodules: ``constants`` (metabolite names), ``kspace`` (k-space truncation and data consistency),
``synth`` (synthetic benchmark from MNI152 anatomy), ``data`` (readers, dataset), ``splits``
(patient-level folds), plus the model, training and evaluation modules.  Importing this package
imports nothing heavy.
"""
