"""Learn ``ctx-photo``'s table bank: ``python -m nicodec.models.ctx.train --out FILE``.

The coder (``coder.py``) is run over crops of the training photos (the PNGs: the JPEGs' block
artefacts would teach the wrong statistics), collecting the token histogram of every context
class of every pass and channel. The histograms are clustered into ``--tables`` tables that
minimise their total code length (k-means under cross-entropy), and each of the broadest is
also stretched by 2**1..2**8 (the same shape at the scales of 9- to 16-bit samples, which the
8-bit photos do not reach). r1 was ``--revision 1 --tables 128 --stretched 16``; r2 to r5
(the default, r5, is the shipped revision) learn 192 tables and stretch the 8 broadest; from
r4 on, the ladder has four steps per class.
From r3 on, the bank is sorted from the narrowest table to the broadest, and the model of the
side information (``side.py``) is learned from the same run: every pass's coefficients and the
tables the classes pick. Nothing here is fitted per image: that is the coder's job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

from nicodec.bitstream.entropy import PRECISION, TOTAL, freqs_from_counts
from nicodec.models.ctx import side
from nicodec.models.ctx.coder import (NTOK, REVISIONS, SHIPPED, Tables, coded_raw, encode_tile,
                                     raw_rows, tokens)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "train"
VALUES = np.arange(1 << 16)
TOKENS = tokens(VALUES)[0]
WIDTH = np.bincount(TOKENS, minlength=NTOK)  # values per token


def class_edges(classes: int = 72, sub: int = 1) -> np.ndarray:
    """Thresholds of the activity estimate (units of 2**-8): four classes per octave of
    |residual| + 1/2, from 2**-0.75, each in ``sub`` steps (r4: 4; every ``sub``-th threshold
    is then a class edge of the ladder without steps)."""
    k = np.arange(1, classes * sub)
    return np.round((2.0 ** ((k - 4 * sub) / (4 * sub)) - 0.5) * 256).astype(np.int64)


def geometric_bank(count: int = 64) -> np.ndarray:
    """A start bank (geometric distributions of growing scale) for collecting histograms."""
    return np.array([table(np.bincount(TOKENS, weights=np.exp(-VALUES / s), minlength=NTOK))
                     for s in np.exp(np.linspace(0, 9, count))])


def table(weights: np.ndarray) -> np.ndarray:
    return freqs_from_counts(weights / weights.sum() * 1e9)


def stretch(freqs: np.ndarray, octaves: int) -> np.ndarray:
    """The token table of 2**octaves * u when u follows ``freqs`` (uniform inside a token)."""
    p = (freqs / freqs.sum() / WIDTH)[TOKENS]  # per value
    scaled = np.repeat(p, 1 << octaves)[: 1 << 16] / (1 << octaves)
    return table(np.bincount(TOKENS, weights=scaled, minlength=NTOK) + 1e-12)


def cluster(hists: np.ndarray, count: int, rounds: int = 25, seed: int = 0) -> np.ndarray:
    """k-means of histograms (n, NTOK) under cross-entropy: ``count`` probability rows, from
    first centres drawn with ``seed`` (histograms weighted by their sample counts)."""
    rng = np.random.default_rng(seed)
    weight = hists.sum(1)
    probs = (hists + 0.02) / (weight[:, None] + 0.02 * NTOK)
    centres = probs[rng.choice(len(hists), count, replace=False, p=weight / weight.sum())]
    for _ in range(rounds):
        pick = (hists @ -np.log2(centres).T).argmin(1)
        for j in range(count):
            chosen = hists[pick == j]
            if len(chosen):
                centres[j] = (chosen.sum(0) + 0.02) / (chosen.sum() + 0.02 * NTOK)
    return centres


def raw_tables(collected: list[tuple[int, np.ndarray, np.ndarray]], shape: tuple[int, ...]
               ) -> np.ndarray:
    """r5: the frequency (of 2**PRECISION) of a 1 as each coded raw bit, by class and token,
    from the bits the coder sent (``collected``: (bit, context, bits) per coder call): the
    ones' share, each context starting from half a one and half a zero."""
    ones, seen = np.full(shape, 0.5), np.ones(shape)
    for j, context, bits in collected:
        ones[j].reshape(-1)[:] += np.bincount(context, bits, ones[j].size)
        seen[j].reshape(-1)[:] += np.bincount(context, None, ones[j].size)
    return np.clip(np.rint(ones / seen * TOTAL), 1, TOTAL - 1).astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DATA)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--tables", type=int, default=192)
    parser.add_argument("--stretched", type=int, default=8, help="broadest tables stretched")
    parser.add_argument("--seed", type=int, default=0,
                        help="the k-means's first centres (another seed: another bank of the "
                             "same quality, within about 0.002 bpp on Kodak for r4)")
    parser.add_argument("--revision", type=int, choices=sorted(REVISIONS), default=SHIPPED,
                        help="the coder revision the bank is for (written into the file)")
    parser.add_argument("--bank-from", type=Path, default=None,
                        help="keep this weight file's bank (r3: learn only the side information)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rev = REVISIONS[args.revision]
    edges = class_edges(sub=rev.sub_steps)
    # r3: the side information's values do not depend on the model they are sent with
    tables = Tables(geometric_bank(), edges, rev, collect=[],
                    side=side.SideModel.neutral() if rev.coded_side else None,
                    collect_side=[] if rev.coded_side else None)
    if coded_raw(rev):  # r5: the raw bits do not depend on their tables either
        tables.raw = np.full((coded_raw(rev), raw_rows(tables), NTOK), TOTAL // 2, np.int64)
        tables.collect_raw = []
    paths = sorted(args.images.rglob("*.png"))
    for path in paths:
        img = np.asarray(Image.open(path).convert("RGB"))[: args.crop, : args.crop]
        encode_tile(img, 8, tables)
    per_step = [h.astype(np.float64) for h in tables.collect]
    hists = np.concatenate(per_step)
    if args.bank_from:
        bank = load_file(str(args.bank_from))["bank"]
    else:
        learned = [table(c) for c in cluster(hists, args.tables, seed=args.seed)]
        broad = sorted(learned, key=lambda f: -(f / f.sum() * np.arange(NTOK)).sum())
        bank = learned + [stretch(f, k) for k in range(1, 9) for f in broad[: args.stretched]]
        bank = np.array(bank[:256], np.int32)
    tensors = {"bank": bank, "edges": edges}
    if rev.coded_side:  # narrow to broad, so neighbouring classes pick nearby indices
        bank = bank[np.argsort((bank * np.arange(NTOK)).sum(1), kind="stable")]
        cost = PRECISION - np.log2(bank)
        picks = [(h @ cost.T).argmin(1) for h in per_step]
        tensors = {"bank": bank, "edges": edges}
        tensors |= side.learn(tables.collect_side, picks).to_tensors()
    if coded_raw(rev):
        tensors["raw"] = raw_tables(tables.collect_raw, tables.raw.shape)
    if args.revision > 1:  # r1's files have no revision tensor
        tensors["revision"] = np.array([args.revision], np.int32)
    save_file(tensors, str(args.out),
              metadata={"images": str(len(paths)), "crop": str(args.crop)})
    print(f"{len(paths)} photos, {len(hists)} class histograms -> {len(bank)} tables")


if __name__ == "__main__":
    main()
