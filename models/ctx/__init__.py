"""Lossless photos by causal context over a coarse-to-fine order of passes (``ctx-photo``).

* ``levels.py``: the order (a coarse grid, then per level the centres and the two kinds of
  midpoints) and each pass's known neighbours on all sides;
* ``coder.py``: one tile's samples -> one range-coded payload and back (per pass and channel a
  least-squares predictor fitted on the image and sent, context classes from local activity,
  one integer table per class picked from a learned bank, hybrid tokens plus raw bits);
* ``codec.py``: the model as the registry loads it (tiles of at most ``TILE`` pixels, one
  packet each);
* ``train.py``: learns the table bank from the training photos.
"""
