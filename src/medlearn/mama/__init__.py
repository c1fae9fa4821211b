"""MaMA: multi-view, multi-scale vision-language pre-training for mammography.

Data side: ``synth`` (synthetic EMBED/RSNA-format exams), ``tables`` (readers), ``report_text``
(structured reports), ``pairing``, ``splits``, ``prepare`` (DICOM -> cached images), ``transforms``
and ``dataset``. Nothing heavy is imported here.
"""
