"""Prediction: one path for one case (:mod:`.case`, used by ``stunet-predict``, :class:`~.segmenter.Segmenter`, the
parts runner and the DICOM input alike) and what it is made of: the checks before and after reading
(:mod:`.discovery`, :mod:`.checks`, :mod:`.budget`, over the shared reader :mod:`stunet.io.reader`), the loaded
model (:mod:`.model`), nnU-Net's preprocessing (:mod:`.preprocessing`, :mod:`.resample`), the blended sliding window (:mod:`.sliding_window`; a CT's tiles
without body are not run, :mod:`.body`), the
export onto the input's grid (:mod:`.export`), the output labels (:mod:`.output_labels`), what is written beside a
segmentation (:mod:`.outputs`), and, for runs shared between processes, claims (:mod:`.claims`) and parts
(:mod:`.parts`).

May import: every room below it (:mod:`stunet.nnunet`, :mod:`stunet.clinical`, :mod:`stunet.weights`,
:mod:`stunet.models`) and the base modules; never :mod:`stunet.cli`.
"""
