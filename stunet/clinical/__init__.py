"""Clinical I/O: DICOM series as inputs (:mod:`.dicom`; its headers, pixel data and zips in :mod:`.dicom_headers`,
:mod:`.dicom_pixels`, :mod:`.dicom_zip`), DICOM-SEG and RT Structure Sets as outputs (:mod:`.dicom_seg`,
:mod:`.rtstruct`; the source slices they reference checked by :mod:`.dicom_sources`), per-label
statistics (:mod:`.statistics`), quality control without labels (:mod:`.quality`) and preview pictures
(:mod:`.preview`). Each works on arrays and files alone, with no model.

May import: the base modules and :mod:`stunet.io` (pydicom is required; highdicom, for DICOM-SEG output, is the
``dicom`` extra).
"""
