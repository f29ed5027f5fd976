"""``digits tune``: a seeded, pruned search on train/validation that ``digits run`` can apply.

Real digits and real training throughout (a few hundred MNIST digits, XGBoost
held to a few dozen rounds on one thread); the Katib Experiment is checked
against Katib's own published types (tests/fixtures/katib, from kubeflow/katib).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from components import tune
from components.cli import build_parser, main, run_arguments
from components.data import Dataset
from components.models import MODEL_KINDS
from components.tune import SPACES, Splits, TuneError
from pipelines.training import FAMILY_ARGUMENTS, build_pipeline, pipeline_defaults
from tests.conftest import ROOT

#: Enough for trees to differ and for Hyperband to prune; one thread: the cores are shared.
QUICK_XGB = {"n_estimators": 40, "n_jobs": 1}
QUICK_XGB_FLAGS = ["--set", "n_estimators=40", "--set", "n_jobs=1"]
FIXTURES = ROOT / "tests" / "fixtures" / "katib"
KATIB_DIR = ROOT / "manifests" / "components" / "katib-tune"
#: Katib's StdOut collector's default filter (pkg/metricscollector/v1beta1/common/const.go).
KATIB_STDOUT_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


@pytest.fixture(scope="module")
def splits(tiny_dataset) -> Splits:
    return Splits.of(tiny_dataset)


# --------------------------------------------------------------------------- the space


@pytest.mark.parametrize("family", sorted(SPACES))
def test_each_space_holds_todays_defaults_and_a_run_can_carry_every_dimension(family):
    space = SPACES[family]
    defaults = MODEL_KINDS[family].defaults
    for dimension in space.dimensions:
        assert dimension.contains(defaults[dimension.name]), dimension
        # what the search varies, `digits run --params` can set
        assert dimension.name in FAMILY_ARGUMENTS[family], dimension.name
    assert space.resource in defaults and space.resource not in space.names
    assert 1 <= space.min_resource < defaults[space.resource]


def test_the_pipelines_family_parameters_default_to_the_families_own():
    pipeline = pipeline_defaults()
    for family, carried in FAMILY_ARGUMENTS.items():
        for name, argument in carried.items():
            assert pipeline[argument] == MODEL_KINDS[family].defaults[name], argument


def test_a_dimension_parses_what_katib_substitutes_and_refuses_the_rest():
    by_name = {d.name: d for d in SPACES["cnn"].dimensions}
    assert by_name["batch_size"].parse("128") == 128
    assert by_name["learning_rate"].parse("0.005") == 0.005
    for name, text in (("batch_size", "100"), ("learning_rate", "1"), ("dropout", "x")):
        with pytest.raises(TuneError, match=name):
            by_name[name].parse(text)


# --------------------------------------------------------------------------- the holdout


class Tripwire:
    """Stands in for the holdout: any use of it at all fails the test."""

    def _touched(self, *_args, **_kwargs):
        raise AssertionError("the search touched the holdout")

    __len__ = __iter__ = __getitem__ = __array__ = __bool__ = _touched

    def __getattr__(self, name):
        self._touched()


def test_the_holdout_never_reaches_the_search(tiny_dataset):
    with pytest.raises(AssertionError, match="holdout"):  # the tripwire itself works
        np.asarray(Tripwire())
    guarded = Dataset(tiny_dataset.x_train, tiny_dataset.y_train, tiny_dataset.x_validation,
                      tiny_dataset.y_validation, x_holdout=Tripwire(), y_holdout=Tripwire(),
                      manifest=tiny_dataset.manifest)
    splits = Splits.of(guarded)
    assert not [f.name for f in dataclasses.fields(Splits) if "holdout" in f.name]
    result = tune.search("xgboost", splits, budget_s=600, trials=3, fixed=QUICK_XGB)
    assert result.settings["holdout"] == "not used"
    assert result.settings["validation_size"] == len(tiny_dataset.y_validation)


# --------------------------------------------------------------------------- the search


def test_a_seeded_search_is_reproducible_and_prunes_poor_trials(splits):
    runs = [tune.search("xgboost", splits, budget_s=600, trials=6, seed=0, fixed=QUICK_XGB)
            for _ in range(2)]
    first, second = ([(r.params, r.state, r.steps, r.accuracy, r.log_loss) for r in run.trials]
                     for run in runs)
    assert first == second
    assert runs[0].best.number == runs[1].best.number
    result = runs[0]
    # trial 0 is today's defaults, scored like every other
    assert result.trials[0].role == "defaults"
    assert result.trials[0].params == SPACES["xgboost"].defaults()
    pruned = [row for row in result.trials if row.state == "pruned"]
    assert pruned, "Hyperband pruned nothing"
    assert all(row.steps < QUICK_XGB["n_estimators"] and row.accuracy is None for row in pruned)
    complete = [row for row in result.trials if row.state == "complete"]
    assert result.best.accuracy == max(row.accuracy for row in complete)
    other = tune.search("xgboost", splits, budget_s=600, trials=2, seed=1, fixed=QUICK_XGB)
    assert other.trials[1].params != result.trials[1].params  # the seed is what decides


def test_the_results_table_and_params_file(splits, tmp_path):
    result = tune.search("xgboost", splits, budget_s=600, trials=3, fixed=QUICK_XGB)
    files = tune.write_results(result, tmp_path / "out")
    rows = files["csv"].read_text().splitlines()
    assert rows[0].startswith("trial,role,state,max_depth,learning_rate,colsample_bytree")
    assert len(rows) == 1 + len(result.trials)
    markdown = files["markdown"].read_text()
    assert f"**Best: trial {result.best.number}**" in markdown and "defaults" in markdown
    assert "the holdout is not used" in markdown
    written = json.loads(files["params"].read_text())
    assert written["family"] == "xgboost" and written["params"] == result.best.params
    assert written["search"]["fixed"] == QUICK_XGB  # said, but not applied by digits run
    assert tune.read_params(files["params"]) == ("xgboost", result.best.params)


def test_a_search_refuses_what_it_cannot_do(splits):
    with pytest.raises(TuneError, match="budget"):
        tune.search("xgboost", splits, budget_s=0)
    with pytest.raises(TuneError, match="metric"):
        tune.search("xgboost", splits, budget_s=60, metric="f1")
    with pytest.raises(TuneError, match="no search space"):
        tune.search("baseline", splits, budget_s=60)
    space = SPACES["xgboost"]
    with pytest.raises(TuneError, match="is searched"):
        tune.fixed_params(space, [("max_depth", "3")])
    with pytest.raises(TuneError, match="not a xgboost setting"):
        tune.fixed_params(space, [("epochs", "3")])
    with pytest.raises(TuneError, match="expected a int"):
        tune.fixed_params(space, [("n_estimators", "many")])


@pytest.mark.slow
def test_a_cnn_search_reports_every_epoch(splits):
    fixed = {"epochs": 3, "min_epoch_steps": 2}
    result = tune.search("cnn", splits, budget_s=600, trials=2, fixed=fixed)
    assert [row.state for row in result.trials] == ["complete", "complete"]
    assert all(row.steps == 3 for row in result.trials)
    assert result.trials[0].params == SPACES["cnn"].defaults()


# --------------------------------------------------------------------------- the CLI


def test_digits_tune_writes_a_params_file_digits_run_quick_applies(mnist_dir, tmp_path, capsys):
    out = tmp_path / "tune"
    code = main(["tune", "--family", "xgboost", "--budget", "2", "--trials", "2",
                 "--train-size", "300", *QUICK_XGB_FLAGS, "--mnist-dir", str(mnist_dir),
                 "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "trial 0 (defaults)" in printed.err and f"--params {out / 'params.json'}" in printed.out
    written = json.loads((out / "params.json").read_text())
    assert written["search"]["train_size"] == 300
    assert written["search"]["validation_size"] == 5000  # the run's own validation split
    # `digits run --quick --params FILE`, through the run's own argument path
    args = build_parser().parse_args(["run", "--quick", "--models", "xgboost,baseline",
                                      "--params", str(out / "params.json"), "--seed", "3"])
    arguments, models = run_arguments(args)
    carried = FAMILY_ARGUMENTS["xgboost"]
    for name, value in written["params"].items():
        assert arguments[carried[name]] == value
    assert arguments["xgb_rounds"] == 20 and arguments["train_size"] == 3000  # --quick stays
    assert arguments["seed"] == 3
    inputs = build_pipeline(models).component_spec.inputs
    assert set(arguments) <= set(inputs)
    # an explicit flag still wins over the file
    args = build_parser().parse_args(["run", "--params", str(out / "params.json"),
                                      "--xgb-rounds", "7"])
    assert run_arguments(args)[0]["xgb_rounds"] == 7


@pytest.mark.slow
def test_digits_run_quick_trains_with_the_tuned_settings(mnist_dir, tmp_path, s3_env,
                                                         monkeypatch):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"family": "xgboost", "params": {
        "max_depth": 4, "learning_rate": 0.2, "colsample_bytree": 0.3}}))
    monkeypatch.setenv("DIGITS_HOME", str(tmp_path / "home"))
    code = main(["run", "--quick", "--models", "xgboost", "--params", str(params),
                 "--mnist-dir", str(mnist_dir), "--no-feedback", "--json"])
    assert code == 0
    from components.registry import Registry
    from components.settings import get_settings

    registry = Registry.from_settings(get_settings())
    [row] = registry.list()
    saved = registry.metadata(row["version"])["params"]
    assert {k: saved[k] for k in ("max_depth", "learning_rate", "colsample_bytree")} == {
        "max_depth": 4, "learning_rate": 0.2, "colsample_bytree": 0.3}


@pytest.mark.parametrize(("content", "models", "message"), [
    ("{not json", "xgboost", "not JSON"),
    ('{"family": "svm", "params": {}}', "xgboost", "family 'svm'"),
    ('{"family": "xgboost", "params": {"depth": 3}}', "xgboost", "no setting 'depth'"),
    ('{"family": "xgboost", "params": {"max_depth": "deep"}}', "xgboost", "should be a int"),
    ('{"family": "xgboost", "params": {"max_bin": 64}}', "xgboost", "cannot set xgboost max_bin"),
    ('{"family": "cnn", "params": {"dropout": 0.2}}', "xgboost", "does not train cnn"),
    ('["max_depth", 3]', "xgboost", "expected"),
])
def test_digits_run_refuses_a_bad_params_file_before_anything_starts(
        tmp_path, capsys, monkeypatch, content, models, message):
    monkeypatch.setenv("DIGITS_HOME", str(tmp_path / "home"))
    path = tmp_path / "params.json"
    path.write_text(content)
    assert main(["run", "--models", models, "--params", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("digits run: --params") and message in error
    assert not (tmp_path / "home").exists()


def test_digits_run_refuses_two_files_for_one_family(tmp_path, capsys):
    path = tmp_path / "params.json"
    path.write_text('{"family": "xgboost", "params": {"max_depth": 3}}')
    assert main(["run", "--params", str(path), "--params", str(path)]) == 2
    assert "already come from" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--budget", "0"], "--budget must be positive"),
    (["--param", "max_depth=3"], "--param goes with --trial"),
    (["--set", "max_depth=3"], "is searched"),
    (["--trial", "--param", "depth=3"], "not searched"),
    (["--trial", "--param", "max_depth=30"], "outside the search space"),
])
def test_digits_tune_refuses_bad_input_in_one_line(mnist_dir, capsys, argv, message):
    assert main(["tune", "--family", "xgboost", "--mnist-dir", str(mnist_dir), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("digits tune:") and message in error and len(error.splitlines()) == 1


# --------------------------------------------------------------------------- Katib


def experiment_schema() -> dict[str, Any]:
    """Katib's published types as a strict JSON Schema: references resolved in place, and
    no field an object's type does not declare (what a Go decoder would drop silently)."""
    fixture = json.loads((FIXTURES / "experiment-openapi.json").read_text())
    prefix = fixture["refPrefix"]

    def strict(node):
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if "$ref" in node:
                node["$ref"] = "#/$defs/" + node["$ref"].removeprefix(prefix)
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/$defs/{fixture['root']}", "$defs": strict(fixture["definitions"])}


def schema_errors(experiment: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(experiment_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(experiment)]


def placeholder_of(name: str) -> str:
    """How a trial template names a parameter Katib fills in."""
    return "${trialParameters." + name + "}"


def webhook_errors(experiment: dict[str, Any]) -> list[str]:
    """The rules Katib's admission webhook applies to a new Experiment
    (pkg/webhook/v1beta1/experiment/validator/validator.go), for what we use."""
    names = json.loads((FIXTURES / "katib-config.json").read_text())
    spec, errors = experiment["spec"], []
    objective = spec["objective"]
    if objective["type"] not in ("minimize", "maximize"):
        errors.append("objective.type")
    if objective["objectiveMetricName"] in objective.get("additionalMetricNames", []):
        errors.append("objective metric repeated in additionalMetricNames")
    if spec["algorithm"]["algorithmName"] not in names["suggestions"]:
        errors.append("algorithm")
    if spec.get("earlyStopping", {}).get("algorithmName", "medianstop") \
            not in names["earlyStoppings"]:
        errors.append("earlyStopping")
    if spec["metricsCollectorSpec"]["collector"]["kind"] not in names["metricsCollectors"]:
        errors.append("metricsCollector")
    for key in ("maxTrialCount", "parallelTrialCount"):
        if spec[key] <= 0:
            errors.append(key)
    if spec["parallelTrialCount"] > spec["maxTrialCount"]:
        errors.append("parallelTrialCount > maxTrialCount")
    for p in spec["parameters"]:
        space = p["feasibleSpace"]
        if p["parameterType"] not in ("int", "double", "categorical", "discrete"):
            errors.append(f"{p['name']}: parameterType")
        if space.get("distribution", "uniform") not in ("uniform", "logUniform", "normal",
                                                        "logNormal"):
            errors.append(f"{p['name']}: distribution")
        if p["parameterType"] in ("int", "double") and (space.get("list") or not (
                space.get("min") and space.get("max"))):
            errors.append(f"{p['name']}: min/max")
        if p["parameterType"] in ("categorical", "discrete") and (
                {"min", "max", "step"} & set(space) or not space.get("list")):
            errors.append(f"{p['name']}: list")
    template = spec["trialTemplate"]
    for key in ("primaryContainerName", "successCondition", "failureCondition"):
        if not template.get(key):
            errors.append(key)
    text = json.dumps(template["trialSpec"])
    references = {p["name"] for p in spec["parameters"]}
    for p in template["trialParameters"]:
        if p["reference"] not in references:
            errors.append(f"trialParameter {p['name']}: unknown reference")
        placeholder = placeholder_of(p["name"])
        if placeholder not in text:
            errors.append(f"trialParameter {p['name']}: not used in the trial")
        text = text.replace(placeholder, "test-value")
    if re.search(r"\$\{trialParameters\..+?\}", text):
        errors.append("the trial uses an undeclared trialParameter")
    job = template["trialSpec"]
    if job.get("metadata", {}).get("name") or job.get("metadata", {}).get("namespace"):
        errors.append("trialSpec names itself")
    containers = job["spec"]["template"]["spec"]["containers"]
    if template["primaryContainerName"] not in {c["name"] for c in containers}:
        errors.append("primaryContainerName names no container")
    return errors


def substituted_job(experiment: dict[str, Any]) -> dict[str, Any]:
    """The trial Job as Katib creates it, each parameter at the low end of its space."""
    text = json.dumps(experiment["spec"]["trialTemplate"]["trialSpec"])
    for p in experiment["spec"]["parameters"]:
        space = p["feasibleSpace"]
        text = text.replace(placeholder_of(p["name"]),
                            space["list"][0] if "list" in space else space["min"])
    job = json.loads(text)
    job["metadata"] = {"name": "trial-1", "namespace": "digits"}
    return job


@pytest.mark.parametrize("family", sorted(SPACES))
def test_the_committed_experiment_is_what_the_code_generates(family, capsys):
    committed = (KATIB_DIR / f"experiment-{family}.yaml").read_text()
    assert committed == tune.katib_yaml(family), (
        f"manifests/components/katib-tune/experiment-{family}.yaml is stale: run "
        f"`digits tune --family {family} --katib > "
        f"manifests/components/katib-tune/experiment-{family}.yaml`")
    assert main(["tune", "--family", family, "--katib"]) == 0
    assert capsys.readouterr().out == committed


@pytest.mark.parametrize("family", sorted(SPACES))
def test_the_experiment_is_one_katib_accepts(family):
    experiment = yaml.safe_load((KATIB_DIR / f"experiment-{family}.yaml").read_text())
    crd = yaml.safe_load((FIXTURES / "experiment-crd.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["served"]]
    assert experiment["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert experiment["kind"] == crd["spec"]["names"]["kind"]
    assert schema_errors(experiment) == []
    assert webhook_errors(experiment) == []


@pytest.mark.parametrize("family", sorted(SPACES))
def test_the_experiment_searches_the_space_digits_tune_searches(family):
    experiment = tune.katib_experiment(family)
    spec = experiment["spec"]
    space = SPACES[family]
    assert [p["name"] for p in spec["parameters"]] == list(space.names)
    for p, dimension in zip(spec["parameters"], space.dimensions, strict=True):
        feasible = p["feasibleSpace"]
        if dimension.kind == "discrete":
            assert [dimension.parse(v) for v in feasible["list"]] == list(dimension.choices)
        else:
            assert (dimension.parse(feasible["min"]), dimension.parse(feasible["max"])) == (
                dimension.low, dimension.high)
            assert (feasible["distribution"] == "logUniform") == dimension.log
    assert spec["objective"] == {
        "type": "maximize", "objectiveMetricName": "validation_accuracy",
        "additionalMetricNames": ["validation_log_loss"],
        "metricStrategies": [{"name": "validation_accuracy", "value": "latest"},
                             {"name": "validation_log_loss", "value": "latest"}]}
    assert {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]} == {
        "random_state": "0", "n_startup_trials": str(tune.STARTUP_TRIALS)}


@pytest.mark.parametrize("family", sorted(SPACES))
def test_the_trial_job_is_a_valid_locked_down_job_running_digits_tune(family):
    import kubernetes_validate

    from components.images import TRAIN_IMAGE

    job = substituted_job(tune.katib_experiment(family))
    kubernetes_validate.validate(job, "1.28.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == TRAIN_IMAGE
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    # the command is one `digits tune` accepts, and its values are in the space
    assert container["command"][:2] == ["digits", "tune"]
    args = tune.parser().parse_args(container["command"][2:])
    assert args.trial and args.family == family
    by_name = {d.name: d for d in SPACES[family].dimensions}
    assert {name for name, _ in args.param} == set(by_name)
    for name, text in args.param:
        by_name[name].parse(text)


def test_schema_validation_can_fail():
    experiment = tune.katib_experiment("xgboost")
    broken = copy.deepcopy(experiment)
    broken["spec"]["maxTrialCounts"] = 3  # a typo Katib's decoder would drop silently
    broken["spec"]["parallelTrialCount"] = "2"
    broken["spec"]["objective"]["goal"] = "high"
    errors = schema_errors(broken)
    assert len(errors) == 3, errors
    broken = copy.deepcopy(experiment)
    broken["spec"]["algorithm"]["algorithmName"] = "optuna"
    broken["spec"]["parameters"][0]["feasibleSpace"]["list"] = ["3"]
    broken["spec"]["trialTemplate"]["trialParameters"][0]["name"] = "depth"
    assert len(webhook_errors(broken)) == 4, webhook_errors(broken)


def test_the_katib_overlay_runs_both_experiments_where_the_collector_is_injected(
        manifests_dir):
    from tests.test_manifests import find, kustomize

    docs = kustomize(manifests_dir / "overlays" / "katib")
    for family in SPACES:
        experiment = find(docs, "Experiment", f"digits-tune-{family}")
        assert experiment["spec"] == tune.katib_experiment(family)["spec"]
    labels = find(docs, "Namespace", "digits")["metadata"]["labels"]
    assert labels["katib.kubeflow.org/metrics-collector-injection"] == "enabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = find(docs, "NetworkPolicy", "digits-tune-trial")
    trial_labels = tune.katib_experiment("xgboost")["spec"]["trialTemplate"]["trialSpec"][
        "spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= trial_labels.items()
    ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert ports == {443, 6789}  # MNIST's download; Katib's DB manager


def test_a_katib_trial_prints_what_katibs_collector_reads(mnist_dir, capsys):
    """The trial command as the Experiment runs it (with the cluster's full data swapped
    for 300 digits and 40 rounds): one line per round, then the model's own figures."""
    experiment = tune.katib_experiment("xgboost")
    job = substituted_job(experiment)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert main([*command[1:], "--train-size", "300", *QUICK_XGB_FLAGS,
                 "--mnist-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    rounds = sum(line.startswith("digits:progress round") for line in out)
    assert rounds >= tune.SPACES["xgboost"].min_resource
    metrics = experiment["spec"]["objective"]
    for name in (metrics["objectiveMetricName"], *metrics["additionalMetricNames"]):
        # what the collector reads from the whole log, as it does: every line, its filter
        values = [float(m[1]) for line in out for m in KATIB_STDOUT_FILTER.findall(line)
                  if m[0] == name]
        assert len(values) == rounds + 1, name  # every round, then the trained model's
        assert all(np.isfinite(values)) and values[-1] >= 0, name


def test_the_fixture_says_where_it_comes_from():
    fixture = json.loads((FIXTURES / "experiment-openapi.json").read_text())
    assert fixture["source"]["repository"] == "https://github.com/kubeflow/katib"
    assert re.fullmatch(r"[0-9a-f]{40}", fixture["source"]["commit"])
    assert (FIXTURES / "experiment-crd.yaml").read_text().startswith(
        "# https://github.com/kubeflow/katib/blob/")
    assert Path(ROOT / "scripts" / "katib_fixture.py").is_file()
