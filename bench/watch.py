"""Drift-detection benchmark: false-alarm rate on clean digits, detection delay on drifted ones.

    python bench/watch.py [--quick] [--window 100] [--json results.json]

A model is trained with the pipeline's own code (``components.train``: XGBoost on
``--train-size`` MNIST digits) and its drift reference built as the train stage
builds it. Streams of digits the model never saw are then cut into windows of
``--window`` images, each judged by ``components.monitor``'s tests exactly as
``digits monitor`` judges a window (the same images and model outputs the
server samples: ``tests/serving/test_monitor.py`` proves that path end to end):

* clean: MNIST's official test digits (another population of writers than the
  training digits: the honest case), shuffled, and the training pool's digits
  left out of training and validation (same population as the reference);
* drifted (:data:`DRIFTS`): rotated 15° (mild) and 30°, inverted, thick strokes (3×3 grey
  dilation), scaled to 0..1 by a client that then sends whole numbers (every
  pixel 0 or 1), and printed digits (DejaVu Sans, centred as MNIST is).

Reported: the share of clean windows that raise an alarm (goal ≤ 1 %), and per
drift kind the share of windows detected and the images until the first detection
(a window's size times the windows it took). A client sending pixels scaled to
0..1 as fractions never reaches the model (the server answers 400); that shows
in ``digits_http_requests_total{status="400"}`` and the DigitsClientErrors alert.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.data import build_dataset, load_mnist  # noqa: E402
from components.monitor import ALPHA, drifted, median_bandwidth, run_tests  # noqa: E402
from components.train import reference_for, train  # noqa: E402
from components.watch import Window  # noqa: E402


def rotated(images: np.ndarray, degrees: float = 30.0) -> np.ndarray:
    from scipy.ndimage import rotate

    turned = rotate(images.astype(np.float32), degrees, axes=(1, 2), reshape=False, order=1)
    return np.clip(np.round(turned), 0, 255).astype(np.uint8)


def inverted(images: np.ndarray) -> np.ndarray:
    return (255 - images).astype(np.uint8)


def thick(images: np.ndarray) -> np.ndarray:
    from scipy.ndimage import grey_dilation

    return grey_dilation(images, size=(1, 3, 3)).astype(np.uint8)


def unit_scaled(images: np.ndarray) -> np.ndarray:
    """A client that scales to 0..1 and sends whole numbers: every pixel 0 or 1."""
    return np.round(images / 255.0).astype(np.uint8)


def printed(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Typeset digits (DejaVu Sans, random size and slight shift), framed as MNIST frames
    handwriting: the glyph fitted in 20×20 and centred by mass in 28×28."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont
    from scipy.ndimage import center_of_mass, shift

    font_path = font_manager.findfont("DejaVu Sans")
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    for i, label in enumerate(labels):
        font = ImageFont.truetype(font_path, int(rng.integers(36, 56)))
        canvas = Image.new("L", (80, 80))
        ImageDraw.Draw(canvas).text((15, 5), str(label), fill=255, font=font)
        box = canvas.getbbox()
        glyph = canvas.crop(box)
        side = max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.size[0] * 20 / side)),
                              max(1, round(glyph.size[1] * 20 / side))), Image.BILINEAR)
        frame = np.zeros((28, 28), dtype=np.float32)
        x, y = (28 - glyph.size[0]) // 2, (28 - glyph.size[1]) // 2
        frame[y:y + glyph.size[1], x:x + glyph.size[0]] = np.asarray(glyph, dtype=np.float32)
        row, col = center_of_mass(frame)
        frame = shift(frame, (13.5 - row, 13.5 - col), order=1)
        images[i] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return images, labels


DRIFTS = {"rotated-15": lambda images: rotated(images, 15.0), "rotated-30": rotated,
          "inverted": inverted, "thick-stroke": thick, "scaled-0..1-as-integers": unit_scaled}


def judge(model, reference, images: np.ndarray, window: int, *, alpha: float,
          permutations: int, bandwidth: float, seed: int) -> list[list[str]]:
    """The drifted tests of each consecutive window of ``images`` (model outputs included)."""
    proba = model.predict_proba(images)
    stream = Window("bench", images, proba.argmax(axis=1), proba.max(axis=1).astype(np.float32),
                    np.arange(len(images), dtype=np.float64))
    return [drifted(run_tests(part, reference, permutations=permutations, seed=seed + i,
                              bandwidth=bandwidth), alpha)
            for i, part in enumerate(stream.split(window))]


def observe_cost(model, reference, images: np.ndarray, model_dir: Path) -> dict[str, dict]:
    """The request path's cost of recording, in process: median microseconds of
    ``Watch.observe`` (1 % payload sample) per request, beside the model's own
    ``predict_proba`` on the same batch (the HTTP server adds more per request)."""
    import os

    from serving.metrics import Metrics
    from serving.model import LoadedModel
    from serving.settings import ServeSettings
    from serving.watch import Watch

    model.set_threads(1)  # as the server runs it (DIGITS_PREDICT_THREADS)
    watch = Watch(ServeSettings(payload_sample=0.01), Metrics(), lambda: None)
    watch._thread_pid = os.getpid()  # no background thread: the request path alone
    loaded = LoadedModel("bench", model.kind, model, {}, "", 0.0, model_dir, reference)

    def median_us(call, repeats: int = 400) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1e6)

    out = {}
    for batch in (1, 64):
        part = images[:batch]
        proba = model.predict_proba(part)
        observe = median_us(lambda part=part, proba=proba: watch.observe(loaded, part, proba))
        predict = median_us(lambda part=part: model.predict_proba(part))
        watch._tallies.clear()
        watch._pending.clear()
        out[str(batch)] = {"observe_us": observe, "predict_us": predict}
        print(f"recording cost, batch {batch}: {observe:.0f} us per request vs predict_proba "
              f"{predict:.0f} us ({observe / predict:.1%})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows (a smoke run)")
    parser.add_argument("--window", type=int, default=100, help="images per window")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--mnist-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    x_pool, y_pool, x_test, y_test, source = load_mnist(args.mnist_dir)
    dataset = build_dataset(x_pool, y_pool, x_test, y_test, source, seed=0,
                            train_size=args.train_size)
    model, info = train("xgboost", dataset, n_estimators=60, max_depth=4, n_jobs=2,
                        early_stopping_rounds=0)
    reference = reference_for(model, dataset)
    print(f"model: xgboost on {len(dataset.y_train)} digits, validation accuracy "
          f"{info['validation_accuracy']:.4f}; window {args.window} images; alpha "
          f"{args.alpha} (Bonferroni over 4 tests)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cost = observe_cost(model, reference, x_test, Path(tmp))
    rng = np.random.default_rng(1)
    used = {d.tobytes() for d in dataset.x_train} | {d.tobytes() for d in dataset.x_validation}
    unseen = np.array([i for i in range(len(x_pool)) if x_pool[i].tobytes() not in used])
    streams = {"clean: MNIST test digits": x_test[rng.permutation(len(x_test))],
               "clean: unused training-pool digits": x_pool[rng.permutation(unseen)]}
    drift_source = x_test[rng.permutation(len(x_test))]
    limit = 10 * args.window if args.quick else None
    bandwidth = median_bandwidth(reference.embedding[np.random.default_rng(0).permutation(
        len(reference.embedding))[:500]])
    common = {"alpha": args.alpha, "permutations": args.permutations, "bandwidth": bandwidth}
    results: dict[str, dict] = {"recording_cost": cost}
    for name, images in streams.items():
        images = images[:limit * 2] if limit else images
        verdicts = judge(model, reference, images, args.window, seed=0, **common)
        alarms = sum(bool(v) for v in verdicts)
        by_test = {t: sum(t in v for v in verdicts) for t in ("class_priors", "confidence",
                                                              "ink", "embedding")}
        results[name] = {"windows": len(verdicts), "false_alarms": alarms,
                         "false_alarm_rate": alarms / max(len(verdicts), 1), "by_test": by_test}
        print(f"{name}: {alarms} false alarms in {len(verdicts)} windows "
              f"({alarms / max(len(verdicts), 1):.1%}); by test {by_test}", flush=True)
    kinds = {kind: transform(drift_source[:limit or 2000]) for kind, transform in DRIFTS.items()}
    kinds["printed-font"] = printed(limit or 2000)[0]
    for kind, images in kinds.items():
        verdicts = judge(model, reference, images, args.window, seed=100, **common)
        hits = [i for i, v in enumerate(verdicts) if v]
        first = hits[0] if hits else None
        tests = sorted({t for v in verdicts for t in v})
        results[kind] = {"windows": len(verdicts), "detected": len(hits),
                         "first_window": first,
                         "images_to_detect": None if first is None else (first + 1) * args.window,
                         "tests": tests}
        print(f"{kind}: detected in {len(hits)}/{len(verdicts)} windows; first alarm after "
              f"{'-' if first is None else (first + 1) * args.window} images; tests {tests}",
              flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"window": args.window, "alpha": args.alpha,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
