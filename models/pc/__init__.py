"""Lossless mode: probabilistic circuits (HCLT) with an exact integer coder.

* ``hclt.py``: the network (Chow-Liu tree structure, mini-batch EM);
* ``coder.py``: its exact integer version and the tree coder;
* ``residuals.py``: the colour transform and prediction residuals of photos;
* ``codec.py``: the shipped models as the codec sees them, tiles of patches (``load_weights``);
* ``train.py``: ``python -m nicodec.models.pc.train {mnist,fashion-mnist,photos}``.
"""
