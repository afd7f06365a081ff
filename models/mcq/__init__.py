"""MCQ mode: the multi-codebook family (after McQuic), 0.06-0.5 bpp; the default model.

* ``network.py``: the network (analysis, coarse and fine quantizers, prediction, synthesis);
* ``quantizers.py``: its multi-codebook, Gumbel and residual quantizers, entropy-constrained
  k-means;
* ``prior.py``: the cascaded prior, float and exact integer, and the unit's context layout;
* ``search.py``: the encoder's effort levels (latent refinement through the synthesis);
* ``codec.py``: the shipped model as the codec sees it (``load_weights``, ``save_weights``);
* ``tiny.py``: TinyMCQ, the family's first network (``mcq-tiny``), with its weight file;
* ``train.py``: ``python -m nicodec.models.mcq.train {tiny,mcq}``.
"""
