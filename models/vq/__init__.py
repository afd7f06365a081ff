"""VQ mode: the extreme-rate family (<= 0.05 bpp), a VQGAN with a ladder of codebook sizes.

* ``vqgan.py``: the network (encoder, spherical codebook, decoder, patch discriminator);
* ``ladder.py``: k-means of the trained codebook into smaller ones and their fine-tuning;
* ``codec.py``: the shipped model as the codec sees it (``load_weights``);
* ``train.py``: ``python -m models.vq.train {vqgan,ladder}``.
"""
