"""VQ mode: the extreme-rate family (<= 0.05 bpp), a VQGAN with a ladder of codebook sizes.

* ``vqgan.py``: the network (encoder, spherical codebook, decoder, patch discriminator);
* ``ladder.py``: k-means of the trained codebook into smaller ones and their fine-tuning;
* ``transformer.py``: the masked index transformer (entropy model and restorer of lost
  indices); ``exact.py`` its exact integer version;
* ``codec.py``: the shipped ladder as the codec sees it (``load_weights``; model ``vq-static``);
  ``masked.py`` the same ladder coded and restored by the transformer (model ``vq``);
* ``train.py``: ``python -m nicodec.models.vq.train {vqgan,ladder,prior}`` (``prior_train.py``: the
  transformer's steps).
"""
