"""File I/O with clear errors: greyscale DICOM (read + MG writer) and NIfTI volumes."""

from medlearn.io.dicom import (
    DicomHeader,
    DicomImage,
    output_range,
    read_dicom,
    read_dicom_header,
)
from medlearn.io.dicom_write import write_dicom_mg
from medlearn.io.nifti import NiftiVolume, check_same_geometry, read_nifti, write_nifti

__all__ = [
    "DicomHeader",
    "DicomImage",
    "NiftiVolume",
    "check_same_geometry",
    "output_range",
    "read_dicom",
    "read_dicom_header",
    "read_nifti",
    "write_dicom_mg",
    "write_nifti",
]
