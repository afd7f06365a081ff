"""ctx-photo: the coarse-to-fine context coder, exact for 8- and 16-bit samples, gray to RGBA,
tiled, damaged packets reported, and the default of --lossless."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nicodec.bitstream.errors import PacketLossError
from nicodec.bitstream.format import parse_header
from nicodec.cli import main as cli
from nicodec.codec import registry
from nicodec.codec.pipeline import decode_detailed, encode, encode_detailed
from nicodec.models.ctx.codec import load_weights
from nicodec.models.ctx.coder import (R1, R2, R3, R4, R5, Tables, _flip, _weighted, decode_tile,
                                     encode_tile, tokens, untoken)
from nicodec.models.ctx.levels import passes
from nicodec.models.ctx.side import SideModel


@pytest.fixture(scope="module", params=["r1", "r2", "r3", "r4", "current"])
def tables(request):
    """The tables of each shipped revision: r1 to r4 (retired, their files still decode) and
    the current one, so that every coder is exercised."""
    weights = None if request.param == "current" else f"ctx-photo-{request.param}.safetensors"
    return registry.load_model("ctx-photo", weights).net.tables


def test_the_weight_file_says_which_coder_revision_reads_it(tmp_path):
    """r1's file has no revision tensor; r2's says 2, r3's 3, r4's 4, the current one 5; an
    unknown revision is refused at load time, not misread."""
    from safetensors.numpy import load_file, save_file

    folder = registry.WEIGHTS_DIR
    assert load_weights(str(folder / "ctx-photo-r1.safetensors"))[0].tables.revision == R1
    assert load_weights(str(folder / "ctx-photo-r2.safetensors"))[0].tables.revision == R2
    assert load_weights(str(folder / "ctx-photo-r3.safetensors"))[0].tables.revision == R3
    assert load_weights(str(folder / "ctx-photo-r4.safetensors"))[0].tables.revision == R4
    assert load_weights(str(folder / "ctx-photo.safetensors"))[0].tables.revision == R5
    tensors = load_file(str(folder / "ctx-photo.safetensors"))
    tensors["revision"] = np.array([99], np.int32)
    save_file(tensors, str(tmp_path / "future.safetensors"))
    with pytest.raises(ValueError, match="revision 99"):
        load_weights(str(tmp_path / "future.safetensors"))


@pytest.mark.parametrize("depth", [8, 16])
def test_the_sign_flip_is_its_own_inverse_over_the_folded_range(depth):
    half = 1 << (depth - 1)
    r = np.arange(-half, half)
    below = np.arange(len(r)) % 3 == 0
    flipped = _flip(r, below, half)
    assert (_flip(flipped, below, half) == r).all()
    everywhere = _flip(r, np.ones(len(r), bool), half)  # a permutation of the range
    assert (np.sort(everywhere) == r).all() and (everywhere[half + 1:] == -r[half + 1:]).all()


def _photo_like(h: int, w: int, c: int, depth: int = 8, seed: int = 0,
                noise: float = 1 / 60) -> np.ndarray:
    """Smooth gradients, an edge and noise: something between a photo and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << depth) - 1
    base = np.stack([(x * 3 + y) * top / (4 * max(w + h, 1)) + k * top / 8 for k in range(c)], -1)
    base[h // 3: h // 2, w // 4: w // 2] = top * 0.8
    noisy = base + rng.normal(0, top * noise, base.shape)
    return np.clip(np.rint(noisy), 0, top).astype(np.uint8 if depth == 8 else np.uint16)


def test_tokens_invert_for_every_16_bit_value():
    u = np.arange(1 << 16)
    tok, nraw, raw = tokens(u)
    assert tok.max() < 40 and (untoken(tok, raw) == u).all()
    assert (nraw < 15).all()


@pytest.mark.parametrize("split_from, split_top", [(None, 1), (0, 1), (500, 1), (0, 2), (200, 2)])
def test_every_neighbour_of_every_pass_is_known_before_it(split_from, split_top):
    """r1's passes, r2's with every finest pass split (as in a big tile), and with some; r3's
    with the level above split too."""
    for h, w in [(1, 1), (2, 3), (3, 2), (4, 4), (37, 53), (70, 129)]:
        known = np.zeros((h, w), bool)
        for p in passes(h, w, split_from, split_top):
            ys, xs = p.positions(h, w)
            at, nb = p.flat(h, w)  # the coder's: computed per grid row and column
            assert (at == ys * w + xs).all() and len(at) == p.samples(h, w)
            into = np.empty((len(p.offsets) + 1, len(at)), np.int64)  # the decoder's slots
            assert (p.flat(h, w, into)[0] == at).all()
            assert all((row == i).all() for row, i in zip(into[1:], nb))
            assert len(nb) == len(p.offsets)
            for (ny, nx), flat in zip(p.neighbours(ys, xs, h, w), nb):
                assert known[ny, nx].all()
                assert (flat == ny * w + nx).all()
            assert not known[ys, xs].any()
            known[ys, xs] = True
        assert known.all()


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 3), (5, 1, 3), (37, 53, 3), (33, 65, 4),
                                   (70, 41, 1), (64, 64, 2)])
@pytest.mark.parametrize("depth", [8, 16])
def test_tiles_round_trip_exactly(tables, shape, depth):
    image = _photo_like(*shape, depth=depth)
    data = encode_tile(image, depth, tables)
    assert (decode_tile(data, shape, depth, tables) == image).all()


@pytest.mark.parametrize("depth", [8, 16])
def test_split_passes_round_trip_exactly(tables, depth):
    """r2 splits only finest passes of 40 000 samples or more (photos of about 400x400 and up),
    r3 those of the two finest levels from 20 000: lowered here, so that small tiles take that
    path, the odd halves' edges included."""
    if not tables.revision.split_finest:
        pytest.skip("r1 splits no pass")

    def splitting(limit: int) -> Tables:
        return replace(tables, revision=replace(tables.revision, split_from=limit))

    # (shape, whether a finest pass reaches 40 samples): (2, 40) has 20 per pass, none split
    for shape, split in [((70, 129, 3), True), ((23, 18, 1), True), ((2, 40, 2), False)]:
        image = _photo_like(*shape, depth=depth)
        data = encode_tile(image, depth, splitting(40))
        assert (decode_tile(data, shape, depth, splitting(40)) == image).all()
        assert (encode_tile(image, depth, splitting(1 << 30)) != data) == split


@pytest.mark.parametrize("depth", [8, 16])
def test_r3_features_round_trip_exactly(depth):
    """r3's features (the odd halves' middle two of the even half's samples next to them, the
    pair blend of every pass that is not compact) only appear in passes of 5000 samples and
    more, the halves in passes of 20 000: with both limits lowered, small tiles of every
    channel count take those paths, edges included, and the features change the bytes (so
    they are used)."""
    shipped = registry.load_model("ctx-photo", "ctx-photo-r3.safetensors").net.tables
    r3 = Tables(shipped.bank, shipped.edges, replace(R3, compact_below=12, split_from=40),
                side=SideModel.neutral())
    for shape in [(70, 129, 3), (23, 18, 1), (33, 65, 4), (2, 40, 2), (5, 1, 3), (1, 1, 1)]:
        image = _photo_like(*shape, depth=depth)
        data = encode_tile(image, depth, r3)
        assert (decode_tile(data, shape, depth, r3) == image).all(), shape
        if shape[0] * shape[1] > 500:
            assert data != encode_tile(image, depth, shipped), shape
    rng = np.random.default_rng(5)  # the pair costs at their cap: noise over the whole range
    noise = rng.integers(0, 1 << depth, (40, 50, 3)).astype(np.uint8 if depth == 8 else np.uint16)
    assert (decode_tile(encode_tile(noise, depth, r3), noise.shape, depth, r3) == noise).all()


def test_the_pair_blend_is_exact_at_its_largest_inputs():
    """The blend divides float64 products of 16-bit pair sums and powers of capped costs: its
    floor must equal the integer quotient, costs (cubed) and samples at their extremes included."""
    from nicodec.models.ctx.coder import PAIR_CAP

    rng = np.random.default_rng(11)
    top, cost_top = (1 << 16) - 1, (PAIR_CAP + 1) ** 3 - 1
    f = [rng.integers(0, top + 1, 20000) for _ in range(4)]
    g = [rng.integers(0, cost_top + 1, 20000) for _ in range(2)]
    # a + b = c + d + 1 and costs 0 and g: the quotient is c + d + 1 - 1/(g + 2), the nearest
    # to an integer from below that the float division must not round up
    f[0][:100] = f[1][:100] = f[2][:100] = top
    f[3][:100] = top - 1 - np.arange(100) % 2
    g[0][:100], g[1][:100] = 0, cost_top - np.arange(100)
    exact = ((f[0] + f[1]) * (g[1] + 1) + (f[2] + f[3]) * (g[0] + 1)) // (g[0] + g[1] + 2)
    blend = _weighted([v.astype(np.float64) for v in f], *[v.astype(np.float64) for v in g])
    assert (blend == exact).all()


def test_the_bytes_do_not_depend_on_the_blas_thread_count(tables):
    """The encoder's fits use BLAS; its LU solve on two threads rounds differently, which used
    to change a sent weight of this image (so ``--threads 2`` wrote other bytes)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(37)
    y, x = np.mgrid[:256, :320]
    image = np.clip(np.stack([np.sin(x / 17 + k) * 60 + np.cos(y / 23) * 50 + 128
                              + rng.normal(0, 3, x.shape) for k in range(3)], -1), 0, 255)
    image = image.astype(np.uint8)
    coded = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            coded.append(encode_tile(image, 8, tables))  # threads from BLAS's limit
            coded += [encode_tile(image, 8, tables, threads=t) for t in (1, 2)]
    assert len(set(coded)) == 1
    assert (decode_tile(coded[0], image.shape, 8, tables) == image).all()


def test_two_blas_threads_fit_the_steps_on_two_threads(monkeypatch):
    """``threads`` left to the encoder follows BLAS's limit (what ``--threads`` sets): at two,
    the steps run on two threads; at one, all in the caller's."""
    import threading
    import time

    from threadpoolctl import threadpool_limits

    from nicodec.models.ctx import coder

    tables = registry.load_model("ctx-photo").net.tables
    fit, names = coder._fit_step, []

    def spy(*args):
        names.append(threading.current_thread().name)
        time.sleep(0.002)  # so that the second thread surely finds a step ready
        return fit(*args)

    monkeypatch.setattr(coder, "_fit_step", spy)
    image = _photo_like(40, 48, 3)
    for threads, expected in ((1, 1), (2, 2)):
        names.clear()
        with threadpool_limits(threads, user_api="blas"):
            encode_tile(image, 8, tables)
        assert len(set(names)) == expected


@pytest.mark.parametrize("failing_channel", [0, 2])
def test_a_failing_step_on_either_thread_stops_the_encoder(monkeypatch, failing_channel):
    """The two-thread encoder raises a step's error (whichever thread fitted it) instead of
    hanging on a step that will never finish."""
    from nicodec.models.ctx import coder

    tables = registry.load_model("ctx-photo").net.tables
    fit = coder._fit_step
    seen = []

    def failing(*args):
        step = next(a for a in args if isinstance(a, coder._Step))
        seen.append(step.c)
        if step.c == failing_channel and seen.count(failing_channel) == 3:
            raise MemoryError(f"channel {failing_channel}")
        return fit(*args)

    monkeypatch.setattr(coder, "_fit_step", failing)
    with pytest.raises(MemoryError, match=f"channel {failing_channel}"):
        encode_tile(_photo_like(64, 64, 3), 8, tables, threads=2)


def _scheduled(steps, fit, listed) -> tuple[list, list[tuple[str, int]]]:
    """The two-thread scheduler's results of ``fit`` (given a step's index in ``listed``) over
    ``steps``, and the order in which the steps started and ended."""
    import threading

    from nicodec.models.ctx import coder

    events, lock = [], threading.Lock()
    index = {id(step): k for k, step in enumerate(listed)}

    def traced(step):
        k = index[id(step)]
        with lock:
            events.append(("start", k))
        result = fit(k)
        with lock:
            events.append(("end", k))
        return result

    return list(coder._in_order(steps, traced, 2)), events


def test_each_step_starts_after_the_steps_it_reads():
    """The two-thread scheduler starts a step only once the earlier channels of its pass and
    its own channel's previous pass are fitted, and yields the results in step order."""
    import time

    from nicodec.models.ctx import coder

    steps = list(coder._steps(70, 129, [1, 0, 2], R3))
    needs = []  # the earlier channels of the pass, and the channel's previous pass
    for k, step in enumerate(steps):
        same_pass = [j for j in range(k) if steps[j].p == step.p]
        own = [j for j in range(k) if steps[j].c == step.c]
        needs.append(same_pass + own[-1:])
    results, events = _scheduled(iter(steps), lambda k: time.sleep(0.001 * (k % 3)) or k,
                                 steps)
    assert results == list(range(len(steps)))
    ended = set()
    for what, k in events:
        if what == "start":
            assert set(needs[k]) <= ended
        else:
            ended.add(k)
    assert ended == set(range(len(steps)))


def test_a_step_is_prepared_once_its_channel_s_previous_pass_is_fitted():
    """With ``prepare`` (the encoder's features of a step from its own channel), the
    two-thread scheduler prepares a step once its own channel's previous pass is fitted (and
    the first channel's step of its pass prepared: r5 reads what that left), fits it once it
    is prepared and the earlier channels of its pass are fitted, hands the fit what was
    prepared, and yields the fits in step order."""
    import threading
    import time

    from nicodec.models.ctx import coder

    steps = list(coder._steps(70, 129, [1, 0, 2], R3))
    index = {id(step): k for k, step in enumerate(steps)}
    events, lock = [], threading.Lock()

    def traced(what, step, result):
        k = index[id(step)]
        with lock:
            events.append((what, "start", k))
        time.sleep(0.001 * (k % 3))
        with lock:
            events.append((what, "end", k))
        return result

    def fit(step, prepared):
        assert prepared == ("prepared", index[id(step)])
        return traced("fit", step, index[id(step)])

    results = coder._in_order(iter(steps), fit, 2,
                              lambda step: traced("prepare", step, ("prepared", index[id(step)])))
    assert list(results) == list(range(len(steps)))
    ended = set()
    for what, when, k in events:
        if when == "end":
            ended.add((what, k))
            continue
        own = [j for j in range(k) if steps[j].c == steps[k].c][-1:]
        same_pass = [j for j in range(k) if steps[j].p == steps[k].p]
        needs = {("fit", j) for j in own} | {("prepare", j) for j in same_pass[:1]}
        if what == "fit":
            needs |= {("prepare", k)} | {("fit", j) for j in same_pass}
        assert needs <= ended, (what, k)
    assert len(ended) == 2 * len(steps)


def test_the_scheduler_starts_no_step_once_its_caller_stops():
    """Closing the results early (the writer failed) lets the steps in flight end and starts
    no other."""
    import threading
    import time

    from nicodec.models.ctx import coder

    steps = list(coder._steps(40, 48, [1, 0, 2], R3))
    release = threading.Event()
    started = []

    def fit(step):
        started.append(step)
        if len(started) > 1:  # the steps after the first wait until the caller has stopped
            release.wait(10)
        return step

    results = coder._in_order(steps, fit, 2)
    assert next(results) is steps[0]
    deadline = time.monotonic() + 30  # both threads take the two steps ready after the first
    while len(started) < 3 and time.monotonic() < deadline:  # (however loaded the machine)
        time.sleep(0.01)
    threading.Timer(0.2, release.set).start()
    results.close()  # returns once both threads have ended
    assert len(started) == 3  # the first, then the two that both threads had taken


def test_an_error_making_the_steps_reaches_the_caller():
    """The steps are listed while the first are fitted: an error making them stops both
    threads and reaches the caller."""
    from nicodec.models.ctx import coder

    def steps():
        yield from list(coder._steps(40, 48, [1, 0, 2], R3))[:5]
        raise MemoryError("making the steps")

    with pytest.raises(MemoryError, match="making the steps"):
        list(coder._in_order(steps(), lambda step: step, 2))


def test_the_robust_fit_recovers_a_plane_far_from_zero():
    """The fits run in float32 on rows centred on a subsample's means; the bias takes the
    centre back, so features and a target far from zero (8-bit values near 200) still give
    the exact coefficients of a noiseless linear target."""
    from nicodec.models.ctx import coder

    rng = np.random.default_rng(5)
    n = 60_000  # a subsample for the reweighting rounds, every row for the last fit
    feats = np.vstack([rng.integers(180, 230, (4, n)), np.ones((1, n))]).astype(np.float64)
    coef = np.array([0.5, -0.25, 0.625, 0.125, 7.0])
    target = coef @ feats
    rows = rng.uniform(0.5, 2, n)
    assert np.allclose(coder._fit_robust(feats, target, rows, rough=np.float32), coef, atol=1e-3)


def test_noise_and_extremes_round_trip(tables):
    rng = np.random.default_rng(3)
    for depth in (8, 16):
        top = (1 << depth) - 1
        for image in (rng.integers(0, top + 1, (40, 37, 3)), np.full((20, 30, 3), top),
                      np.zeros((9, 9, 1)), (np.indices((31, 31)).sum(0) % 2 * top)[..., None]):
            data = encode_tile(image, depth, tables)
            assert (decode_tile(data, image.shape, depth, tables) == image).all()


def test_16_bit_gradients_cost_near_their_noise(tables):
    """Gaussian noise of sigma 2**16/600 (about 109) holds log2(sigma sqrt(2 pi e)) = 8.8 bits
    per sample; predicting from noisy neighbours adds some: well under 16 raw bits."""
    image = _photo_like(128, 128, 3, depth=16, noise=1 / 600)
    bits = 8 * len(encode_tile(image, 16, tables)) / image.size
    assert 8.8 < bits < 10


def test_lossless_default_is_ctx_photo_and_exact(small_rgb):
    assert registry.LOSSLESS_MODEL == "ctx-photo"
    data = encode(small_rgb, lossless=True)
    header, _ = parse_header(data)
    assert header.model_id == registry.MODELS["ctx-photo"].model_id
    decoded = decode_detailed(data)
    assert (decoded.pixels == small_rgb).all() and decoded.lost_packets == 0


def test_gray_and_rgba_round_trip_through_the_codec(small_rgb):
    gray = small_rgb[:, :, :1]
    assert (decode_detailed(encode(gray, lossless=True)).pixels == gray).all()
    alpha = (np.arange(small_rgb.shape[1]) * 5 % 256).astype(np.uint8)
    rgba = np.dstack([small_rgb, np.broadcast_to(alpha, small_rgb.shape[:2])])
    decoded = decode_detailed(encode(rgba, lossless=True))
    assert (decoded.pixels == small_rgb).all() and (decoded.metadata.alpha == rgba[..., 3]).all()


def test_tiles_are_packets_and_a_damaged_one_is_reported(small_tiles):
    image = _photo_like(70, 100, 3)
    enc = encode_detailed(image, model="ctx-photo")
    header, offset = parse_header(enc.data)
    assert len(header.packet_lengths) == 3 * 4
    assert (decode_detailed(enc.data).pixels == image).all()
    data = bytearray(enc.data)
    data[offset + header.packet_lengths[0] + 5] ^= 0xFF  # inside the second tile's packet
    with pytest.raises(PacketLossError, match="1 of 12 packets"):
        decode_detailed(bytes(data), strict=True)
    decoded = decode_detailed(bytes(data))
    assert decoded.lost_packets == 1 and decoded.lost[0, 1] and decoded.lost.sum() == 1
    assert (decoded.pixels[:32, 32:64] == 128).all()
    keep = np.ones(image.shape[:2], bool)
    keep[:32, 32:64] = False
    assert (decoded.pixels[keep] == image[keep]).all()


def test_pc_photo_files_still_decode(small_rgb):
    enc = encode_detailed(small_rgb[:16, :32], model="pc-photo")
    assert (decode_detailed(enc.data).pixels == small_rgb[:16, :32]).all()


def test_cli_lossless_uses_ctx_photo(tmp_path, small_rgb):
    src, nic, out = tmp_path / "a.png", tmp_path / "a.nic", tmp_path / "b.png"
    Image.fromarray(small_rgb).save(src)
    runner = CliRunner()
    assert runner.invoke(cli, ["encode", str(src), "-o", str(nic), "--lossless"]).exit_code == 0
    header, _ = parse_header(nic.read_bytes())
    assert header.model_id == registry.MODELS["ctx-photo"].model_id
    assert runner.invoke(cli, ["decode", str(nic), "-o", str(out)]).exit_code == 0
    assert (np.asarray(Image.open(out)) == small_rgb).all()


def test_cli_says_a_damaged_lossless_file_is_not_exact(tmp_path, small_tiles):
    image = _photo_like(40, 70, 3)
    data = bytearray(encode(image, lossless=True))
    header, offset = parse_header(bytes(data))
    data[offset + 3] ^= 0xFF  # inside the first tile's packet
    nic = tmp_path / "d.nic"
    nic.write_bytes(bytes(data))
    runner = CliRunner()
    res = runner.invoke(cli, ["decode", str(nic), "-o", str(tmp_path / "d.png")])
    assert res.exit_code == 0 and "no longer decodes exactly" in res.output
    res = runner.invoke(cli, ["decode", str(nic), "-o", str(tmp_path / "e.png"), "--strict"])
    assert res.exit_code == 1 and not (tmp_path / "e.png").exists()


def test_packets_asked_for_are_tiles_with_a_warning(small_rgb):
    with pytest.warns(UserWarning, match="one packet per tile"):
        data = encode(small_rgb, lossless=True, packets=3)
    assert len(parse_header(data)[0].packet_lengths) == 1
