"""``digits monitor``: is the production model still shown what it was trained for?

Reads the payload windows the servers sampled (``payloads/<version>/``) for the
production version, compares them with the training reference stored with that
version (:mod:`components.watch`) and looks at recent feedback (users'
corrected digits). Writes a verdict (``--json``; and to ``monitor/verdict.json``
in the registry, which the servers export as metrics for the alerts) and a
self-contained HTML report.

The tests, each two-sample (the reference is a sample too, so its own noise is
accounted for), on the recent images pooled and on each window of
``--window`` images:

========================  =========================================================
``class_priors``          chi-squared test of homogeneity: predicted classes, live vs
                          the model's predictions on its validation digits
``confidence``            Kolmogorov–Smirnov: top-class probability
``ink``                   Kolmogorov–Smirnov: ink mass (mean intensity)
``embedding``             maximum mean discrepancy (Gaussian kernel, bandwidth the
                          reference's median distance) on the 8-dimensional PCA
                          embedding, p-value from :data:`PERMUTATIONS` permutations
========================  =========================================================

Drift is declared when any test's p-value is below ``alpha / 4`` (Bonferroni),
so under no drift a verdict — or a window — raises a false alarm with
probability at most ``alpha`` (default :data:`ALPHA` = 1 %).

Retraining is advised (``retrain``) when drift is found and there are at least
``--min-feedback`` corrected digits to learn from, or when live accuracy on
corrected digits falls below ``--min-accuracy``.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from components.stem import NUM_CLASSES
from components.watch import (
    PAYLOADS,
    REFERENCE_FILE,
    VERDICT_KEY,
    WINDOW_SUFFIX,
    Reference,
    WatchError,
    Window,
    center_of_mass,
    ink,
)

log = logging.getLogger(__name__)

#: The false-alarm rate of one verdict (and of one window) under no drift.
ALPHA = 0.01
TESTS = ("class_priors", "confidence", "ink", "embedding")
#: Permutations of the MMD test; the smallest p-value it can give is 1/(P+1), below
#: ALPHA / len(TESTS) so the embedding alone can raise an alarm.
PERMUTATIONS = 999
#: Images per window for the timeline (and the per-window false-alarm rate).
WINDOW = 200
#: Most recent images the verdict pools (older ones are only in the timeline).
POOLED = 1000
#: Reference images the MMD compares against (a subsample of the stored sample).
MMD_REFERENCE = 500
#: How far back to look, hours.
SINCE_HOURS = 24.0
#: Corrected digits needed before a retrain is advised, and the accuracy floor on them.
MIN_FEEDBACK = 50
MIN_ACCURACY = 0.9
#: The images shown as the most unusual.
UNUSUAL = 24
HISTORY = "monitor/verdicts"
#: The last retraining ``--trigger`` started (the cooldown), and every one of them.
TRIGGER_KEY = "monitor/trigger.json"
TRIGGERS = "monitor/triggers"
COOLDOWN_HOURS = 24.0


class MonitorError(ValueError):
    """Nothing to monitor (no production model, no reference); the message says what to do."""


@dataclass(frozen=True)
class TestResult:
    name: str
    statistic: float
    p_value: float
    method: str


# --------------------------------------------------------------------------- the tests


def class_priors_test(predicted: np.ndarray, reference: Reference) -> TestResult:
    """Chi-squared homogeneity of predicted-class counts, live vs reference."""
    from scipy.stats import chi2_contingency

    live = np.bincount(predicted, minlength=NUM_CLASSES).astype(np.float64)
    table = np.stack([live, reference.predicted_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return TestResult("class_priors", 0.0, 1.0, "chi-squared homogeneity")
    statistic, p_value, _, _ = chi2_contingency(table, correction=False)
    return TestResult("class_priors", float(statistic), float(p_value),
                      "chi-squared homogeneity")


def ks_test(name: str, live: np.ndarray, reference: np.ndarray) -> TestResult:
    from scipy.stats import ks_2samp

    result = ks_2samp(live, reference)
    return TestResult(name, float(result.statistic), float(result.pvalue),
                      "two-sample Kolmogorov-Smirnov")


def median_bandwidth(points: np.ndarray) -> float:
    """The median pairwise distance: the Gaussian kernel's usual scale."""
    distances = np.sqrt(_squared_distances(points, points))
    positive = distances[np.triu_indices(len(points), k=1)]
    positive = positive[positive > 0]
    return float(np.median(positive)) if len(positive) else 1.0


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)


def mmd_test(live: np.ndarray, reference: np.ndarray, *, bandwidth: float,
             permutations: int = PERMUTATIONS, seed: int = 0) -> TestResult:
    """Squared MMD (biased estimate) with a permutation p-value.

    With ``a`` the weights (1/n for live points, -1/m for reference ones),
    MMD² = aᵀKa, so all permutations are one matrix product.
    """
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([live, reference]).astype(np.float64)
    kernel = np.exp(-_squared_distances(pooled, pooled) / (2 * bandwidth ** 2))
    n, m = len(live), len(reference)
    weights = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])
    observed = float(weights @ kernel @ weights)
    shuffled = np.stack([weights[rng.permutation(n + m)] for _ in range(permutations)])
    null = ((shuffled @ kernel) * shuffled).sum(axis=1)
    p_value = (1 + int((null >= observed - 1e-12).sum())) / (permutations + 1)
    return TestResult("embedding", observed, p_value,
                      f"MMD, Gaussian kernel, {permutations} permutations")


def run_tests(window: Window, reference: Reference, *, permutations: int = PERMUTATIONS,
              seed: int = 0, bandwidth: float | None = None) -> dict[str, TestResult]:
    """Every test of :data:`TESTS` on one sample of live images."""
    rng = np.random.default_rng(seed)
    ref_embedding = reference.embedding
    if len(ref_embedding) > MMD_REFERENCE:
        ref_embedding = ref_embedding[rng.permutation(len(ref_embedding))[:MMD_REFERENCE]]
    bandwidth = bandwidth or median_bandwidth(ref_embedding)
    live_embedding = reference.embed(window.images)
    results = [
        class_priors_test(window.predicted, reference),
        ks_test("confidence", window.confidence, reference.confidence),
        ks_test("ink", ink(window.images), reference.ink),
        mmd_test(live_embedding, ref_embedding, bandwidth=bandwidth,
                 permutations=permutations, seed=seed),
    ]
    return {result.name: result for result in results}


def drifted(tests: dict[str, TestResult], alpha: float) -> list[str]:
    """The tests that reject at the Bonferroni-corrected level."""
    return [name for name, test in tests.items() if test.p_value < alpha / len(tests)]


# --------------------------------------------------------------------------- reading


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def read_windows(registry: Any, version: str, *, since: datetime | None = None,
                 max_images: int | None = None) -> list[Window]:
    """The payload windows of ``version`` since ``since``, oldest first; the newest ones
    holding at most about ``max_images`` images. Unreadable windows are skipped (logged)."""
    prefix = f"{PAYLOADS}/{version}/"
    keys = sorted(obj.object_name for obj in registry.client.list_objects(
        registry.bucket, prefix=prefix) if obj.object_name.endswith(WINDOW_SUFFIX))
    if since is not None:
        cutoff = _stamp(since)
        keys = [key for key in keys if key[len(prefix):] >= cutoff]
    windows: list[Window] = []
    total = 0
    for key in reversed(keys):
        raw = registry.read(key)
        if raw is None:
            continue
        try:
            window = Window.from_bytes(raw, key)
        except WatchError as error:
            log.warning("skipping %s", error)
            continue
        if window.version != version:
            log.warning("skipping %s: it says version %s", key, window.version)
            continue
        windows.append(window)
        total += len(window)
        if max_images is not None and total >= max_images:
            break
    return windows[::-1]


def purge_payloads(registry: Any, older_than: timedelta) -> int:
    """Delete every payload window (any version) sampled before ``older_than`` ago; return
    how many. Sampled requests are users' inputs: they are kept no longer than needed."""
    cutoff = _stamp(datetime.now(timezone.utc) - older_than)
    doomed = [obj.object_name for obj in registry.client.list_objects(
        registry.bucket, prefix=f"{PAYLOADS}/", recursive=True)
        if obj.object_name.endswith(WINDOW_SUFFIX)
        and obj.object_name.rsplit("/", 1)[-1] < cutoff]
    for key in doomed:
        registry.client.remove_object(registry.bucket, key)
    return len(doomed)


def production_reference(registry: Any, version: str | None = None
                         ) -> tuple[str, dict[str, Any], Reference]:
    """The version to watch (default: production), its metadata and its reference."""
    if version is None:
        pointer = registry.production()
        if pointer is None:
            raise MonitorError("no production model yet: nothing to monitor")
        version = pointer.version
    metadata = registry.metadata(version)
    if REFERENCE_FILE not in metadata.get("files", {}):
        raise MonitorError(f"{version} was stored without a drift reference "
                           f"({REFERENCE_FILE}); models trained by this release have one")
    raw = registry.read(f"{metadata['status']}/{version}/{REFERENCE_FILE}")
    if raw is None:
        raise MonitorError(f"{version}: {REFERENCE_FILE} is missing from the store")
    from components.registry import sha256_bytes

    if sha256_bytes(raw) != metadata["files"][REFERENCE_FILE]["sha256"]:
        raise MonitorError(f"{version}: {REFERENCE_FILE} fails its sha256 check")
    return version, metadata, Reference.from_json(raw)


def feedback_summary(registry: Any, version: str, since: datetime | None) -> dict[str, Any]:
    """Live accuracy on the corrected digits users sent about ``version`` since ``since``.

    Feedback keys start with their UTC arrival stamp (``feedback/<stamp>-…``), so only
    the items of the period are read, however much older feedback the bucket holds.
    """
    from components.feedback import PREFIX, FeedbackItem

    cutoff = None if since is None else f"{PREFIX}/{_stamp(since)}"
    items = []
    for obj in registry.client.list_objects(registry.bucket, prefix=f"{PREFIX}/"):
        name = obj.object_name
        if obj.is_dir or not name.endswith(".json") or (cutoff and name < cutoff):
            continue
        raw = registry.read(name)
        if not raw:  # deleted between listing and reading
            continue
        try:
            item = FeedbackItem.from_stored(json.loads(raw), legacy_key=b"")
        except (ValueError, TypeError) as error:
            log.warning("skipping feedback %s: %s", name, error)
            continue
        if item.model_version == version and item.predicted is not None:
            items.append(item)
    correct = sum(item.predicted == item.label for item in items)
    return {"count": len(items),
            "accuracy": correct / len(items) if items else None,
            "disagreed": len(items) - correct}


# --------------------------------------------------------------------------- the verdict


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def unusual(images: np.ndarray, reference: Reference, count: int = UNUSUAL) -> np.ndarray:
    """Indices of the images farthest from the reference digits (mean distance to their 5
    nearest reference neighbours in the embedding), most unusual first."""
    if not len(images):
        return np.zeros(0, dtype=np.int64)
    distances = np.sqrt(_squared_distances(reference.embed(images).astype(np.float64),
                                           reference.embedding))
    k = min(5, distances.shape[1])
    score = np.sort(distances, axis=1)[:, :k].mean(axis=1)
    return np.argsort(score)[::-1][:count]


def assess(windows: list[Window], reference: Reference, feedback: dict[str, Any], *,
           version: str, alpha: float = ALPHA, window_size: int = WINDOW,
           pooled: int = POOLED, permutations: int = PERMUTATIONS,
           min_feedback: int = MIN_FEEDBACK, min_accuracy: float = MIN_ACCURACY,
           seed: int = 0) -> dict[str, Any]:
    """The verdict on the recent windows: JSON-ready, with a per-window timeline."""
    if 1 / (permutations + 1) >= alpha / len(TESTS):
        raise MonitorError(
            f"{permutations} permutations cannot give a p-value below alpha/{len(TESTS)} = "
            f"{alpha / len(TESTS):g}: the embedding test could never find drift; use at least "
            f"{int(len(TESTS) / alpha)}")
    verdict: dict[str, Any] = {
        "version": version, "timestamp": time.time(), "alpha": alpha,
        "threshold": alpha / len(TESTS), "window_size": window_size,
        "feedback_count": feedback["count"], "feedback_accuracy": feedback["accuracy"],
    }
    if not windows or sum(len(w) for w in windows) < min(window_size, pooled):
        images = sum(len(w) for w in windows)
        verdict.update(drift=False, images=images, tests={}, drifted=[], timeline=[],
                       drift_since=None, first_image=None, last_image=None)
        return _advise(verdict, min_feedback, min_accuracy,
                       note=f"only {images} sampled images (need {min(window_size, pooled)})")
    joined = Window.concat(windows)
    recent = Window(version, joined.images[-pooled:], joined.predicted[-pooled:],
                    joined.confidence[-pooled:], joined.times[-pooled:])
    rng = np.random.default_rng(seed)
    bandwidth = median_bandwidth(reference.embedding[rng.permutation(
        len(reference.embedding))[:MMD_REFERENCE]])
    tests = run_tests(recent, reference, permutations=permutations, seed=seed,
                      bandwidth=bandwidth)
    rejected = drifted(tests, alpha)
    timeline = []
    for index, part in enumerate(joined.split(window_size)):
        part_tests = run_tests(part, reference, permutations=permutations, seed=seed + index,
                               bandwidth=bandwidth)
        timeline.append({"start": _iso(part.times[0]), "end": _iso(part.times[-1]),
                         "images": len(part), "drifted": drifted(part_tests, alpha),
                         "p_values": {n: t.p_value for n, t in part_tests.items()}})
    since = None
    for entry in reversed(timeline):  # the start of the latest run of drifted windows
        if not entry["drifted"]:
            break
        since = entry["start"]
    verdict.update(
        drift=bool(rejected), drifted=rejected, images=len(recent),
        first_image=_iso(recent.times[0]), last_image=_iso(recent.times[-1]),
        tests={name: {**asdict(test), "drifted": name in rejected}
               for name, test in tests.items()},
        timeline=timeline, drift_since=since if rejected else None,
        live={"predicted_priors": (np.bincount(recent.predicted, minlength=NUM_CLASSES)
                                   / len(recent)).tolist(),
              "mean_confidence": float(recent.confidence.mean()),
              "mean_ink": float(ink(recent.images).mean()),
              "mean_center": center_of_mass(recent.images).mean(axis=0).tolist()},
        reference={"predicted_priors": reference.predicted_priors.tolist(),
                   "mean_confidence": float(reference.confidence.mean()),
                   "mean_ink": float(reference.ink.mean()),
                   "mean_center": reference.center.mean(axis=0).tolist()},
    )
    return _advise(verdict, min_feedback, min_accuracy)


def _advise(verdict: dict[str, Any], min_feedback: int, min_accuracy: float,
            note: str = "") -> dict[str, Any]:
    """``retrain`` and its ``reason``: drift with feedback to learn from, or live accuracy
    on corrected digits below the floor (each needs ``min_feedback`` of them)."""
    count, accuracy = verdict["feedback_count"], verdict["feedback_accuracy"]
    enough = count >= min_feedback
    drift = f"drift in {', '.join(verdict['drifted'])}" if verdict["drift"] else ""
    if enough and accuracy is not None and accuracy < min_accuracy:
        retrain = True
        reason = (f"live accuracy {accuracy:.1%} on {count} corrected digits is below "
                  f"{min_accuracy:.0%}" + (f", and {drift}" if drift else ""))
    elif drift and enough:
        retrain, reason = True, f"{drift} and {count} corrected digits to train on"
    elif drift:
        retrain, reason = False, (f"{drift}, but only {count} corrected digits (need "
                                  f"{min_feedback}): label more first")
    else:
        retrain, reason = False, note or "no drift"
    verdict.update(retrain=retrain, reason=reason)
    return verdict


# --------------------------------------------------------------------------- the report


def _png(image: np.ndarray, scale: int = 3) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).resize((28 * scale, 28 * scale), Image.NEAREST).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figures(verdict: dict[str, Any], windows: list[Window], reference: Reference
             ) -> list[tuple[str, str]]:
    """(title, data URI) of the report's plots."""
    from components.rendering.figures import _figure, _with_style, figure_to_data_uri

    @_with_style
    def draw() -> list[tuple[str, str]]:
        out = []
        timeline = verdict["timeline"]
        if timeline:
            fig = _figure(7.5, 2.8)
            ax = fig.subplots()
            for name in TESTS:
                ax.plot(range(len(timeline)), [max(w["p_values"][name], 1e-6) for w in timeline],
                        marker="o", ms=3, label=name)
            ax.axhline(verdict["threshold"], color="crimson", ls="--", lw=1,
                       label=f"threshold {verdict['threshold']:.4f}")
            ax.set_yscale("log")
            ax.set_xlabel(f"window ({verdict['window_size']} images each), oldest first")
            ax.set_ylabel("p-value")
            ax.legend(fontsize=7, ncol=5, loc="lower left")
            out.append(("p-value of each test, window by window", figure_to_data_uri(fig)))
        joined = Window.concat(windows)
        fig = _figure(7.5, 2.6)
        left, middle, right = fig.subplots(1, 3)
        digits = np.arange(NUM_CLASSES)
        live = np.bincount(joined.predicted, minlength=NUM_CLASSES) / max(len(joined), 1)
        left.bar(digits - 0.2, reference.predicted_priors, 0.4, label="reference")
        left.bar(digits + 0.2, live, 0.4, label="live")
        left.set_xticks(digits)
        left.set_title("predicted class")
        left.legend(fontsize=7)
        bins = np.linspace(0, 1, 21)
        middle.hist(reference.confidence, bins, density=True, alpha=0.6, label="reference")
        middle.hist(joined.confidence, bins, density=True, alpha=0.6, label="live")
        middle.set_title("top-class confidence")
        bins = np.linspace(0, 1, 41)
        right.hist(reference.ink, bins, density=True, alpha=0.6, label="reference")
        right.hist(ink(joined.images), bins, density=True, alpha=0.6, label="live")
        right.set_title("ink mass")
        out.append(("live vs reference", figure_to_data_uri(fig)))
        return out

    return draw()


def render_html(verdict: dict[str, Any], windows: list[Window], reference: Reference) -> str:
    """The monitor report: one HTML file, every image inline, nothing fetched."""
    from components.rendering.page import stylesheet

    e = html.escape
    state = ("DRIFT" if verdict["drift"] else "no drift") + (
        " · retrain advised" if verdict["retrain"] else "")
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(test['method'])}</td><td>{test['statistic']:.4g}</td>"
        f"<td>{test['p_value']:.3g}</td><td>{'drift' if test['drifted'] else 'ok'}</td></tr>"
        for name, test in verdict["tests"].items())
    accuracy = verdict["feedback_accuracy"]
    body = [
        f"<section><h2>Verdict: {e(state)}</h2><p>{e(verdict['reason'])}.</p>"
        f"<p>Version <code>{e(verdict['version'])}</code>; {verdict['images']} recent sampled "
        f"images ({e(str(verdict.get('first_image')))} to {e(str(verdict.get('last_image')))})"
        f"; drifting since {e(str(verdict.get('drift_since') or '-'))}. Feedback: "
        f"{verdict['feedback_count']} corrected digits, live accuracy "
        f"{'-' if accuracy is None else f'{accuracy:.1%}'}.</p>"
        f"<p>Each test is two-sample against the version's training reference; drift when a "
        f"p-value is below α/{len(TESTS)} = {verdict['threshold']:.4g} (Bonferroni, α = "
        f"{verdict['alpha']:g}: at most {verdict['alpha']:.0%} false alarms).</p>"
        "<table><tr><th>test</th><th>method</th><th>statistic</th><th>p-value</th>"
        f"<th>result</th></tr>{rows}</table></section>",
    ]
    if windows:
        for title, uri in _figures(verdict, windows, reference):
            body.append(f'<section><h2>{e(title)}</h2><img src="{uri}" alt="{e(title)}">'
                        "</section>")
        joined = Window.concat(windows)
        picks = unusual(joined.images, reference)
        cells = "".join(
            f'<figure style="display:inline-block;margin:4px"><img src="{_png(joined.images[i])}"'
            f' alt="unusual input"><figcaption>→ {joined.predicted[i]} '
            f"({joined.confidence[i]:.2f})<br>{e(_iso(joined.times[i])[11:19])}</figcaption>"
            "</figure>" for i in picks)
        body.append("<section><h2>The most unusual inputs</h2><p>Farthest from the training "
                    "digits in the embedding; caption: prediction (confidence), time (UTC)."
                    f"</p>{cells}</section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>digits monitor: {e(verdict['version'])}</title><style>{stylesheet()}</style></head>
<body><header><h1>Production monitor</h1><div class="meta">generated
{e(_iso(verdict['timestamp']))} · version {e(verdict['version'])}</div></header>
<main>{''.join(body)}</main></body></html>
"""


# --------------------------------------------------------------------------- the command


def monitor(registry: Any, *, version: str | None = None, since_hours: float = SINCE_HOURS,
            report: Path | None = None, record: bool = True, **options: Any
            ) -> dict[str, Any]:
    """Read, test, advise; write the report and (``record``) the verdict to the registry."""
    version, _, reference = production_reference(registry, version)
    since = datetime.now(timezone.utc) - timedelta(hours=since_hours)
    pooled = options.get("pooled", POOLED)
    window = options.get("window_size", WINDOW)
    windows = read_windows(registry, version, since=since, max_images=max(pooled, 20 * window))
    feedback = feedback_summary(registry, version, since)
    verdict = assess(windows, reference, feedback, version=version, **options)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_html(verdict, windows, reference))
        verdict["report"] = str(report)
    if record:
        raw = json.dumps(verdict, indent=2).encode()
        registry.append(VERDICT_KEY, raw, "application/json")
        registry.append(f"{HISTORY}/{_stamp(datetime.now(timezone.utc))}.json", raw,
                        "application/json")
    return verdict


# --------------------------------------------------------------------------- retraining


def _read_with_etag(registry: Any, key: str) -> tuple[dict[str, Any] | None, str | None]:
    raw, etag = registry.read_with_etag(key)
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        record = None  # unreadable: treated as no earlier run (the write below replaces it)
    return (record if isinstance(record, dict) else None), etag


def trigger(registry: Any, verdict: dict[str, Any], start: Callable[[], dict[str, Any]], *,
            runner: str, cooldown_hours: float = COOLDOWN_HOURS) -> dict[str, Any]:
    """Start one retraining run (``start``) if ``verdict`` calls for it and no run was
    started within ``cooldown_hours``; record when and why in the registry.

    The cooldown record (``monitor/trigger.json``) is claimed with a conditional
    write before the run starts, so of two monitors deciding at the same moment
    exactly one starts a run. Every start is kept under ``monitor/triggers/``.
    """
    from components.registry import WriteConflict

    if not verdict["retrain"]:
        return {"started": False, "reason": f"no retraining called for ({verdict['reason']})"}
    last, etag = _read_with_etag(registry, TRIGGER_KEY)
    now = time.time()
    if last is not None and now - float(last.get("at", 0)) < cooldown_hours * 3600:
        return {"started": False, "reason": (
            f"cooldown: a run was started at {last.get('started_at')} ({last.get('reason')}); "
            f"the next may start after {_iso(float(last['at']) + cooldown_hours * 3600)}"),
            "last": last}
    record = {"at": now, "started_at": _iso(now), "version": verdict["version"],
              "reason": verdict["reason"], "verdict_timestamp": verdict["timestamp"],
              "runner": runner, "cooldown_hours": cooldown_hours}
    try:
        registry.write_if_unchanged(TRIGGER_KEY, json.dumps(record).encode(), etag=etag)
    except WriteConflict:
        return {"started": False,
                "reason": "another monitor started a run at the same moment"}
    try:
        record["run"] = start()
    except Exception as error:
        record["error"] = f"{type(error).__name__}: {error}"
        _record(registry, record)
        # A run that never started must not hold the cooldown.
        if last is not None:
            registry.append(TRIGGER_KEY, json.dumps(last).encode(), "application/json")
        else:
            registry.client.remove_object(registry.bucket, TRIGGER_KEY)
        raise
    _record(registry, record)
    registry.append(TRIGGER_KEY, json.dumps(record, default=str).encode(), "application/json")
    return {"started": True, "reason": verdict["reason"], "run": record["run"]}


def _record(registry: Any, record: dict[str, Any]) -> None:
    registry.append(f"{TRIGGERS}/{_stamp(datetime.now(timezone.utc))}.json",
                    json.dumps(record, indent=2, default=str).encode(), "application/json")


def format_verdict(verdict: dict[str, Any]) -> str:
    lines = [f"{verdict['version']}: {'DRIFT' if verdict['drift'] else 'no drift'} on "
             f"{verdict['images']} sampled images; retrain: "
             f"{'yes' if verdict['retrain'] else 'no'} ({verdict['reason']})"]
    for name, test in verdict["tests"].items():
        lines.append(f"  {name:<13} p = {test['p_value']:.3g}  ({test['method']})"
                     + ("  DRIFT" if test["drifted"] else ""))
    if verdict["feedback_accuracy"] is not None:
        lines.append(f"  feedback: {verdict['feedback_accuracy']:.1%} of "
                     f"{verdict['feedback_count']} corrected digits")
    if verdict.get("report"):
        lines.append(f"  report: {verdict['report']}")
    if verdict.get("trigger"):
        outcome = verdict["trigger"]
        lines.append(f"  trigger: {'started a run' if outcome['started'] else 'no run'} "
                     f"({outcome['reason']})" + (f": {outcome['run']}" if outcome.get("run")
                                                 else ""))
    return "\n".join(lines)
