"""Few-shot segmentation (#22): masks for new classes from a few labelled images.

One module per concept: :mod:`.scenes` (the embedded scenes made from character datasets),
:mod:`.fss` (the ``fss-folder`` layout: loading your own data, exporting the scenes),
:mod:`.episodes` (1-way or N-way K-shot episodes), :mod:`.metrics` (mIoU, FB-IoU, instances, AP50),
:mod:`.learners` (mask-aware learners) and :mod:`.plugin` (how the domain registers itself).
Importing this package imports nothing heavy; import the modules you use.
"""
