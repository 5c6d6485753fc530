"""Does meta-saliency find the pixels that matter for training?  ``normgrad eval training``.

=====================  ================================================================
module                 job
=====================  ================================================================
``fashion_mnist``      the IDX reader and the Fashion-MNIST splits (Debian's package)
``cnn``                the small CNN trained here, seeded, cached (``weights_only``)
``masking``            keep / remove the top-k % pixels of a map (mean or blurred fill)
``saliency_maps``      one map per image and method, from normgrad's registry
``inner_step``         the paper's per-image SGD step and what it does to a loss
``per_image``          the per-image study (any model and images: two regimes)
``roar``               ROAR and KAR: retrain from scratch on modified images
``stats``              bootstrap intervals, paired tests, effect sizes, verdicts
``summary``            raw results → intervals, comparisons and claims (the JSON)
``markdown``           the JSON → ``training.md``
``figures``            the plots
``study``              everything in one call, full and quick configurations (CLI: :mod:`normgrad.cli.training`)
=====================  ================================================================
"""
