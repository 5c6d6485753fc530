"""Faithfulness you can check: ROAD, insertion/deletion, the anchors side by side, and a planted-shortcut ground truth.

======================  ==============================================================
module                  job
======================  ==============================================================
``imputation``          ROAD's noisy linear imputation (one sparse solve per image)
``pixels``              model inputs ↔ pixels, ranking by a map, class probabilities
``road``                ROAD: MoRF, LeRF and their combination over removal fractions
``insertion_deletion``  RISE's insertion and deletion (and a ROAD substrate)
======================  ==============================================================
"""
