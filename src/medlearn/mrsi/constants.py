"""Names shared by the MRSI task: the metabolites and the in-plane MRI/MRSI ratio."""

from __future__ import annotations

METABOLITES: tuple[str, ...] = ("tCr", "Gln", "Glu", "Gly", "tCho", "Ins", "NAA")
"""The 7 metabolites of the reference data; the position in this tuple is the metabolite id."""

MRI_FACTOR: int = 3
"""MRI voxels per MRSI voxel along each in-plane axis, and MRI sub-slices per MRSI slice."""

METABOLITE_ALIASES: dict[str, tuple[str, ...]] = {
    "tCr": ("tCr", "Cr+PCr", "PCr+Cr", "TCr"),
    "Gln": ("Gln",),
    "Glu": ("Glu",),
    "Gly": ("Gly",),
    "tCho": ("tCho", "GPC+PCh", "PCh+GPC", "TCho", "Cho"),
    "Ins": ("Ins", "mI", "myo-Ins"),
    "NAA": ("NAA",),
}
"""File-name stems accepted for each metabolite in NIfTI folders (FSL-MRS names combined
metabolites like ``Cr+PCr``); the first stem that exists on disk is read."""
