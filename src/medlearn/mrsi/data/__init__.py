"""MRSI data layer: patient readers for both on-disk layouts, validation, and the training dataset.

One module per concept:

* :mod:`~medlearn.mrsi.data.patient`: :class:`PatientData` (maps (S, H, W), MRI slabs
  (S, 3H, 3W, 3), quality mask) and the checks every reader shares;
* :mod:`~medlearn.mrsi.data.npy`: the reference layout (``<patient>/Met_filtered/<met>.npy``,
  ``MRI_sliced/{T1,flair}_sliced.npy``);
* :mod:`~medlearn.mrsi.data.nifti`: the clinical layout (``<patient>/concs[/<kind>]/<met>.nii.gz``,
  ``T1``/``FLAIR`` NIfTI on a 3x finer grid, optional ``quality_mask``) and MRI resampling;
* :mod:`~medlearn.mrsi.data.layout`: layout detection, patient listing, :func:`load_patient`,
  :func:`verify_dataset`;
* :mod:`~medlearn.mrsi.data.dataset`: :class:`MRSIDataset`.
"""

from medlearn.mrsi.data.dataset import MRSIDataset
from medlearn.mrsi.data.layout import detect_layout, list_patients, load_patient, verify_dataset
from medlearn.mrsi.data.nifti import mri_affine_from_map_affine, resample_mri_to_map_grid
from medlearn.mrsi.data.patient import LAYOUTS, PatientData, metabolite_index

__all__ = [
    "PatientData",
    "load_patient",
    "list_patients",
    "detect_layout",
    "metabolite_index",
    "MRSIDataset",
    "LAYOUTS",
    "mri_affine_from_map_affine",
    "resample_mri_to_map_grid",
    "verify_dataset",
]
