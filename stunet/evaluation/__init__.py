"""Evaluation of segmentations against references, and cohort reports: the metrics of one label (:mod:`.metrics`,
with the surfaces of :mod:`.surface`), pairing and reading label images (:mod:`.pairing`), a cohort's evaluation
(:mod:`.evaluate`, ``stunet.evaluate``, ``stunet-evaluate``), its summary (:mod:`.summary`), the HTML report
(:mod:`.report`) and the page of unlabelled predictions (:mod:`.predictions`, ``stunet-report``). Works on arrays and
files alone, with no model.

May import: the base modules, the io room (:mod:`stunet.io`: every image file is read through its reader) and the
clinical room (DICOM-SEG reading is the ``dicom`` extra, behind
``stunet.clinical.dicom_seg.require()``); numpy, scipy, scikit-image (the marching-cubes surface table), SimpleITK and
matplotlib. Nothing from nnunet, prediction or cli.
"""
