"""Faithfulness you can check: ROAD, insertion/deletion, the anchors side by side, and a planted-shortcut ground truth.

======================  ==============================================================
module                  job
======================  ==============================================================
``imputation``          ROAD's noisy linear imputation (one sparse solve per image)
``pixels``              model inputs ↔ pixels, ranking by a map, class probabilities
``road``                ROAD: MoRF, LeRF and their combination over removal fractions
``insertion_deletion``  RISE's insertion and deletion (and a ROAD substrate)
``anchors``             pytorch-grad-cam's GradCAM, GradCAM++, HiResCAM, LayerCAM, RefineCAM
``maps``                every scored map: registry methods, per layer, the default, anchors
``scoring``             one subject's maps → every metric, per image
``summary``             means, paired comparisons, claims and verdicts
``shortcut_study``      the planted-shortcut ground truth and the mask-leak controls
``study``               ``normgrad eval faithfulness``: regimes, presets, records, ``--merge``
``markdown``            the JSON → ``faithfulness.md``
``anchor_grid``         the default beside the anchors on the grid benchmark (hit, mass, time)
======================  ==============================================================
"""
