"""Does pixel-level TracIn find the training images, and the pixels in them, that a prediction rests on?  ``normgrad eval influence``.

=============  ================================================================
module         job
=============  ================================================================
``setup``      planted shortcut and mislabels, SGD with a checkpoint per epoch
``proponents`` (a) patched test images: patched proponents, patch-pixel AUROC
``mislabels``  (b) self-influence finds mislabels; equal to Captum's
``figures``    proponents with their maps; the most self-influential images
``markdown``   the JSON → ``influence.md`` with a computed "what holds"
``study``      everything in one call, full and quick configurations
=============  ================================================================
"""
