"""Mask-aware learners: adapt on (images, masks), predict per-pixel foreground probabilities.

* :class:`~.panet.PANet` (``seg-panet``): prototype matching with masked average pooling and
  PANet's prototype alignment regularisation (Wang et al., ICCV 2019), meta-trained.
* :class:`~.anil.SegANIL` (``seg-anil``): ANIL on a small FCN, the head adapted by gradient
  steps through :mod:`metakit.inner`, meta-trained through them.
* :class:`~.finetune.FineTuneHead` (``seg-finetune``): the transfer baseline; a supervised
  encoder, then a new head fine-tuned on each support set.
* :class:`~.intensity.IntensityBaseline` (``seg-intensity``): no learning; foreground by the
  support's intensity statistics. The floor every learner has to clear on unseen classes.

All of them are :class:`~.base.MaskLearner` s, registered by the segmentation plugin.
"""
