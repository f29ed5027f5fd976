"""Training benchmark: our CNN and XGBoost beside the simplest public peers, same data, same run.

    python bench/training.py [--quick] [--json results.json]

Peers (trained here, in this invocation, on exactly our split):
- keras-io's "simple MNIST convnet" (two 3×3 conv blocks, dropout, softmax), 15 epochs,
  batch 128, Adam — https://keras.io/examples/vision/mnist_convnet/;
- XGBoost's defaults for this task: ``XGBClassifier(tree_method="hist", max_depth=6)``,
  100 rounds, on the raw pixels.
Ours: ``components.train.train`` with the families' defaults, the code path the
pipeline runs. Every model is scored on the frozen holdout (MNIST's official 10,000
test digits); in-process latency is the median of many ``predict_proba`` calls.

The table gives each model's accuracy, its gain over its peer, its training time as a
ratio of the peer's, and its latency for one image and for 1,024. Absolute seconds
move by ±30% between runs on a shared machine; the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.data import Dataset, build_dataset, load_mnist  # noqa: E402
from components.stem import flatten, preprocess  # noqa: E402
from components.train import train  # noqa: E402

PEER_CNN_EPOCHS, PEER_CNN_BATCH = 15, 128
PEER_XGB_ROUNDS, PEER_XGB_DEPTH = 100, 6
#: Calls timed per latency figure (the median is reported).
LATENCY_CALLS = {1: 200, 1024: 10}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def latency_ms(predict, images: np.ndarray) -> dict[str, float]:
    """Median milliseconds per call for one image and for a batch of 1,024."""
    out = {}
    for batch, calls in LATENCY_CALLS.items():
        x = images[:batch]
        predict(x)  # warm up
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            predict(x)
            times.append(time.perf_counter() - started)
        out[f"batch_{batch}"] = round(float(np.median(times)) * 1000, 3)
    return out


class KerasIoConvnet:
    """keras-io ``mnist_convnet``, as published (the peer, not ours)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def fit(self, dataset: Dataset) -> None:
        import keras
        from keras import layers

        keras.utils.set_random_seed(0)
        self.model = keras.Sequential([
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ])
        self.model.compile(loss="categorical_crossentropy", optimizer="adam",
                           metrics=["accuracy"])
        self.model.fit(preprocess(dataset.x_train), np.eye(10)[dataset.y_train],
                       batch_size=PEER_CNN_BATCH, epochs=self.epochs, verbose=2)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.model(preprocess(images), training=False).numpy()


class DefaultXGBoost:
    """``XGBClassifier(tree_method="hist", max_depth=6)`` on raw pixels (the peer)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def fit(self, dataset: Dataset) -> None:
        import xgboost

        self.model = xgboost.XGBClassifier(tree_method="hist", max_depth=PEER_XGB_DEPTH,
                                           n_estimators=self.rounds, random_state=0,
                                           n_jobs=os.cpu_count())
        self.model.fit(flatten(dataset.x_train), dataset.y_train)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(flatten(images))


def measure(name: str, fit, predict, dataset: Dataset) -> dict:
    log(f"training {name}…")
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # training logs; stdout is the table
        fit()
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(predict(dataset.x_holdout).argmax(axis=1) == dataset.y_holdout))
    log(f"{name}: holdout {accuracy:.4f} in {seconds:.0f} s")
    return {"model": name, "accuracy": accuracy, "train_seconds": round(seconds, 1),
            "latency_ms": latency_ms(predict, dataset.x_holdout)}


def run(quick: bool) -> dict:
    mnist_dir = os.environ.get("DIGITS_MNIST_DIR") or ROOT.parent / "shared" / "data" / "mnist"
    x_train, y_train, x_test, y_test, source = load_mnist(Path(mnist_dir))
    dataset = build_dataset(x_train, y_train, x_test, y_test, source, seed=0,
                            train_size=3000 if quick else None)
    # --quick: what `digits run --quick` trains with, a smoke run of a few minutes.
    cnn_quick = {"epochs": 3, "batch_size": 64} if quick else {}
    xgb_rounds = 20 if quick else None
    peer_cnn = KerasIoConvnet(cnn_quick.get("epochs", PEER_CNN_EPOCHS))
    peer_xgb = DefaultXGBoost(xgb_rounds or PEER_XGB_ROUNDS)
    ours: dict = {}

    def fit_ours(kind: str, **params) -> None:
        ours[kind], _ = train(kind, dataset, **params)

    rows = [
        measure("keras-io convnet", lambda: peer_cnn.fit(dataset), peer_cnn.predict_proba,
                dataset),
        measure("digits cnn", lambda: fit_ours("cnn", **cnn_quick),
                lambda x: ours["cnn"].predict_proba(x), dataset),
        measure("default XGBoost", lambda: peer_xgb.fit(dataset), peer_xgb.predict_proba,
                dataset),
        measure("digits xgboost", lambda: fit_ours("xgboost", **({"n_estimators": xgb_rounds}
                                                                  if xgb_rounds else {})),
                lambda x: ours["xgboost"].predict_proba(x), dataset),
    ]
    for peer, mine in ((rows[0], rows[1]), (rows[2], rows[3])):
        mine["peer"] = peer["model"]
        mine["accuracy_gain"] = round(mine["accuracy"] - peer["accuracy"], 4)
        mine["train_time_ratio"] = round(mine["train_seconds"] / peer["train_seconds"], 2)
    return {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "train_size": len(dataset.y_train), "holdout_size": len(dataset.y_holdout),
            "quick": quick, "rows": rows}


def table(results: dict) -> str:
    """The results as a Markdown table (also what the README shows)."""
    lines = ["| model | holdout accuracy | vs peer | training | time vs peer | "
             "latency, 1 image | latency, 1,024 images |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        gain = f"{row['accuracy_gain'] * 100:+.2f} pt" if "peer" in row else "(peer)"
        ratio = f"{row['train_time_ratio']:.2f}×" if "peer" in row else "(peer)"
        lines.append(f"| {row['model']} | {row['accuracy']:.2%} | {gain} | "
                     f"{row['train_seconds']:.0f} s | {ratio} | "
                     f"{row['latency_ms']['batch_1']:.2f} ms | "
                     f"{row['latency_ms']['batch_1024']:.1f} ms |")
    machine = results["machine"]
    lines.append("")
    lines.append(f"{results['train_size']:,} training digits, {results['holdout_size']:,} "
                 f"holdout; {machine['cores']} cores ({machine['cpu']}), "
                 f"Python {machine['python']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3,000 digits, short training: a smoke run")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    results = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
