"""Extract from a kubeflow/katib checkout what tests/test_tune.py validates against.

    git clone https://github.com/kubeflow/katib /tmp/katib
    python scripts/katib_fixture.py /tmp/katib tests/fixtures/katib

Writes, each with its source path and commit:

- ``experiment-crd.yaml``: the Experiment CRD as Katib ships it (group, version,
  kind). Its ``openAPIV3Schema`` preserves unknown fields, so the API server checks
  nothing inside ``spec``: Katib's webhook decodes it into its Go types instead.
- ``experiment-openapi.json``: those Go types as Katib publishes them
  (``api/openapi-spec/swagger.json``): ``v1beta1.Experiment`` and every definition
  it references, unchanged.
- ``katib-config.json``: the suggestion, early-stopping and metrics-collector
  names a standard install registers (its webhook refuses any other).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPOSITORY = "https://github.com/kubeflow/katib"
CRD = "manifests/v1beta1/components/crd/experiment.yaml"
OPENAPI = "api/openapi-spec/swagger.json"
CONFIG = "manifests/v1beta1/installs/katib-standalone/katib-config.yaml"
ROOT_DEFINITION = "v1beta1.Experiment"
REF_PREFIX = "#/components/schemas/"


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                          check=True).stdout


def closure(schemas: dict, root: str) -> dict:
    """``root`` and every schema it reaches through ``$ref``."""
    seen: dict = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = schemas[name]
        text = json.dumps(schemas[name])
        for part in text.split('"$ref": "')[1:]:
            todo.append(part.split('"', 1)[0].removeprefix(REF_PREFIX))
    return dict(sorted(seen.items()))


def main(checkout: str, output: str) -> int:
    checkout_path, out = Path(checkout), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    commit = git(checkout_path, "rev-parse", "HEAD").strip()
    source = {"repository": REPOSITORY, "commit": commit}

    crd = git(checkout_path, "show", f"HEAD:{CRD}")
    (out / "experiment-crd.yaml").write_text(
        f"# {REPOSITORY}/blob/{commit}/{CRD}\n# (verbatim; see scripts/katib_fixture.py)\n" + crd)

    spec = json.loads(git(checkout_path, "show", f"HEAD:{OPENAPI}"))
    definitions = closure(spec["components"]["schemas"], ROOT_DEFINITION)
    (out / "experiment-openapi.json").write_text(json.dumps(
        {"source": {**source, "path": OPENAPI}, "root": ROOT_DEFINITION,
         "refPrefix": REF_PREFIX, "definitions": definitions}, indent=1) + "\n")

    config = yaml.safe_load(git(checkout_path, "show", f"HEAD:{CONFIG}"))["runtime"]
    names = {"source": {**source, "path": CONFIG},
             "suggestions": [s["algorithmName"] for s in config["suggestions"]],
             "earlyStoppings": [s["algorithmName"] for s in config["earlyStoppings"]],
             "metricsCollectors": [c["kind"] for c in config["metricsCollectors"]]}
    (out / "katib-config.json").write_text(json.dumps(names, indent=1) + "\n")
    print(f"{out}: katib {commit[:12]}, {len(definitions)} definitions")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
