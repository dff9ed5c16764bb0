"""The KEDA examples in deploy/kubernetes/keda/, checked without a cluster.

The keda.sh/v1alpha1 objects are validated against KEDA's CRD schema as the models of
``cloudcoil-models-keda`` carry it (generated from the CRDs of a KEDA release), closed to unknown
fields the way kubectl's strict field validation is; built-in objects go to
``kubernetes-validate``. The metrics-api trigger's GJSON path is run by ``gjson`` (gjson-py) on
an answer shaped like ``/api/v1/queues``, and the prometheus trigger's query by ``promtool`` on
the series of two exporter replicas.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gjson
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda_models

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KEDA = KUBERNETES / "keda"
METRICS_API = KEDA / "scaledobject-metrics-api.yaml"
PROMETHEUS = KEDA / "scaledobject-prometheus.yaml"
BASIC_AUTH = KEDA / "basic-auth.yaml"
#: The trailing marker of the commented-out lines that turn on basic auth.
AUTH_MARKER = "  # AUTH"
#: The queue both examples scale on.
QUEUE = "celery"
PROMTOOL = shutil.which("promtool")

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    """The YAML documents of a file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def only(path: Path, kind: str) -> Doc:
    """The one object of ``kind`` in a file."""
    (found,) = [d for d in documents(path) if d["kind"] == kind]
    return found


def trigger(path: Path) -> Doc:
    """The one trigger of the ScaledObject in a file."""
    (found,) = only(path, "ScaledObject")["spec"]["triggers"]
    return dict(found)


def closed(node: Any) -> Any:
    """A JSON Schema with every object schema that lists properties closed to any other.

    An optional field's ``anyOf: [X, null]`` becomes X, so errors name the field's own problem.
    """
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items()}
    alternatives = out.get("anyOf", [])
    if len(alternatives) == 2 and {"type": "null"} in alternatives:
        del out["anyOf"]
        (kept,) = [a for a in alternatives if a != {"type": "null"}]
        out.update(kept)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def keda_errors(doc: Doc) -> list[str]:
    """What KEDA's CRD schema (strict) finds wrong with a keda.sh/v1alpha1 object, as path: message."""
    assert doc["apiVersion"] == "keda.sh/v1alpha1", doc["apiVersion"]
    model = getattr(keda_models, doc["kind"])
    schema = closed(model.model_json_schema(by_alias=True, mode="validation"))
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(doc)
    )


def with_auth_uncommented(text: str) -> str:
    """The file's text with the lines marked AUTH uncommented."""
    lines = []
    for line in text.splitlines():
        if line.endswith(AUTH_MARKER):
            body = line[: -len(AUTH_MARKER)]
            indent = len(body) - len(body.lstrip())
            assert body[indent:].startswith("# "), line
            line = body[:indent] + body[indent + 2 :]
        lines.append(line)
    return "\n".join(lines) + "\n"


# --- the objects -------------------------------------------------------------------------------


def test_keda_folder_holds_the_expected_objects() -> None:
    """Two alternative ScaledObjects for the worker, and a Secret and TriggerAuthentication."""
    found = {
        path.name: sorted((d["kind"], d["metadata"]["name"]) for d in documents(path))
        for path in sorted(KEDA.iterdir())
    }
    assert found == {
        "basic-auth.yaml": [
            ("Secret", "celery-exporter-basic-auth"),
            ("TriggerAuthentication", "celery-exporter-basic-auth"),
        ],
        "scaledobject-metrics-api.yaml": [("ScaledObject", "celery-worker")],
        "scaledobject-prometheus.yaml": [("ScaledObject", "celery-worker")],
    }


def test_keda_objects_match_the_crd_schema() -> None:
    """Every keda.sh object validates strictly against KEDA's CRD schema, the Secret against 1.29."""
    checked = []
    for path in sorted(KEDA.glob("*.yaml")):
        for doc in documents(path):
            if doc["apiVersion"] == "keda.sh/v1alpha1":
                assert keda_errors(doc) == [], (path.name, keda_errors(doc))
            else:
                kubernetes_validate.validate(doc, "1.29.0", strict=True)
            checked.append((path.name, doc["kind"]))
    assert sorted(checked) == [
        ("basic-auth.yaml", "Secret"),
        ("basic-auth.yaml", "TriggerAuthentication"),
        ("scaledobject-metrics-api.yaml", "ScaledObject"),
        ("scaledobject-prometheus.yaml", "ScaledObject"),
    ]


def break_field_name(doc: Doc) -> None:
    """Misspell an optional field of the spec."""
    doc["spec"]["minReplicaCont"] = doc["spec"].pop("minReplicaCount")


def break_metadata_type(doc: Doc) -> None:
    """Give a trigger parameter as a number; the CRD takes strings only."""
    doc["spec"]["triggers"][0]["metadata"]["targetValue"] = 20


def break_replica_type(doc: Doc) -> None:
    """Give a replica count as a string."""
    doc["spec"]["maxReplicaCount"] = "10"


def break_target(doc: Doc) -> None:
    """Leave out the required name of the scale target."""
    del doc["spec"]["scaleTargetRef"]["name"]


def break_trigger_field(doc: Doc) -> None:
    """Misspell a trigger's metadata key as a field of the trigger itself."""
    doc["spec"]["triggers"][0]["metdata"] = doc["spec"]["triggers"][0].pop("metadata")


BROKEN: dict[str, tuple[Callable[[Doc], None], str]] = {
    "misspelled field": (break_field_name, "spec: Additional properties are not allowed"),
    "number in metadata": (break_metadata_type, "spec/triggers/0/metadata/targetValue: 20 is not"),
    "string replicas": (break_replica_type, "spec/maxReplicaCount: '10' is not of type 'integer'"),
    "target without name": (break_target, "spec/scaleTargetRef: 'name' is a required property"),
    "misspelled trigger field": (break_trigger_field, "spec/triggers/0: 'metadata' is a required"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_keda_schema_rejects_a_broken_scaled_object(case: str) -> None:
    """The same validator rejects the metrics-api ScaledObject with one field broken."""
    breaker, expected = BROKEN[case]
    doc = copy.deepcopy(only(METRICS_API, "ScaledObject"))
    assert keda_errors(doc) == []
    breaker(doc)
    errors = keda_errors(doc)
    assert any(error.startswith(expected) for error in errors), errors


def test_keda_schema_rejects_a_broken_trigger_authentication() -> None:
    """The same validator rejects a TriggerAuthentication whose secret reference lacks its key."""
    doc = copy.deepcopy(only(BASIC_AUTH, "TriggerAuthentication"))
    del doc["spec"]["secretTargetRef"][1]["key"]
    assert keda_errors(doc) == ["spec/secretTargetRef/1: 'key' is a required property"]
    doc["spec"]["secretTargetRefs"] = doc["spec"].pop("secretTargetRef")
    assert keda_errors(doc)[0].startswith("spec: Additional properties are not allowed")


# --- what they point at ------------------------------------------------------------------------


def test_keda_scaled_objects_scale_the_worker_deployment() -> None:
    """Both ScaledObjects scale worker-sidecar.yaml's Deployment, the default target kind."""
    worker = only(KUBERNETES / "worker-sidecar.yaml", "Deployment")
    for path in (METRICS_API, PROMETHEUS):
        spec = only(path, "ScaledObject")["spec"]
        assert spec["scaleTargetRef"] == {"name": worker["metadata"]["name"]}, path.name
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10), path.name
        assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}, path.name


def test_keda_metrics_api_reads_the_exporter_service() -> None:
    """The metrics-api trigger GETs /api/v1/queues from exporter.yaml's Service on its port."""
    service = only(KUBERNETES / "exporter.yaml", "Service")
    (port,) = service["spec"]["ports"]
    found = trigger(METRICS_API)
    assert found["type"] == "metrics-api"
    url = urlsplit(found["metadata"]["url"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "http",
        service["metadata"]["name"],
        port["port"],
        "/api/v1/queues",
    )
    assert port["port"] == 9808
    assert found["metadata"]["targetValue"] == "20"
    assert "authenticationRef" not in found and "authMode" not in found["metadata"]


def test_keda_basic_auth_lines_uncommented_make_a_valid_object() -> None:
    """Uncommenting the AUTH lines adds authMode basic and a reference to basic-auth.yaml's objects."""
    text = METRICS_API.read_text()
    assert text.count(AUTH_MARKER) == 3
    (doc,) = [d for d in yaml.safe_load_all(with_auth_uncommented(text)) if d]
    assert keda_errors(doc) == []
    (found,) = doc["spec"]["triggers"]
    auth = only(BASIC_AUTH, "TriggerAuthentication")
    secret = only(BASIC_AUTH, "Secret")
    assert found["metadata"]["authMode"] == "basic"
    assert found["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"]: r["key"] for r in refs} == {
        "username": "username",
        "password": "password",
    }
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    assert set(secret["stringData"]) == {"username", "password"}
    rest = {k: v for k, v in found["metadata"].items() if k != "authMode"}
    assert rest == trigger(METRICS_API)["metadata"]


def test_default_kustomization_leaves_the_keda_examples_out() -> None:
    """`kubectl apply -k deploy/kubernetes` applies no KEDA object: clusters without KEDA lack its CRDs."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    named = [*kustomization.get("resources", []), *kustomization.get("components", [])]
    assert named == ["exporter.yaml", "monitoring.yaml"]
    assert not (KEDA / "kustomization.yaml").exists()


# --- the numbers they read ---------------------------------------------------------------------

#: An answer of /api/v1/queues: the queue of interest is not the first, others come before it.
QUEUES_ANSWER: Doc = {
    "queues": [
        {"name": "billing", "length": 40, "unacked": 0, "consumers": 1, "oldest_message_age": 90.0},
        {"name": QUEUE, "length": 12, "unacked": 3, "consumers": 2, "oldest_message_age": 4.5},
        {"name": "celery.dlq", "length": 7, "unacked": None, "consumers": None,
         "oldest_message_age": None},
    ],
    "updated": 1765000000.0,
}  # fmt: skip


def test_value_location_selects_the_queue_length() -> None:
    """The GJSON path picks the named queue's length as a JSON number, wherever it is listed."""
    location = trigger(METRICS_API)["metadata"]["valueLocation"]
    assert location == f'queues.#(name=="{QUEUE}").length'
    found = gjson.get(QUEUES_ANSWER, location)
    assert found == 12 and type(found) is int
    reordered = {**QUEUES_ANSWER, "queues": QUEUES_ANSWER["queues"][::-1]}
    assert gjson.get(reordered, location) == 12


def test_value_location_finds_nothing_without_the_queue() -> None:
    """After a failed queue poll (no queues) the path selects nothing: KEDA's trigger errors."""
    location = trigger(METRICS_API)["metadata"]["valueLocation"]
    assert gjson.get({"queues": [], "updated": 1765000000.0}, location, quiet=True) is None
    with pytest.raises(gjson.GJSONError):
        gjson.get({"queues": QUEUES_ANSWER["queues"][:1], "updated": None}, location)


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make system-deps` installs Debian's prometheus"
)
def test_prometheus_query_counts_a_queue_once_with_two_replicas(tmp_path: Path) -> None:
    """The trigger's query reads the queue's length once when two exporter replicas report it."""
    found = trigger(PROMETHEUS)
    assert found["type"] == "prometheus"
    meta = found["metadata"]
    assert (meta["threshold"], meta["ignoreNullValues"]) == ("20", "false")
    assert re.findall(r'queue_name="(\w+)"', meta["query"]) == [QUEUE]

    def series(
        pod: str, instance: str, queue: str, values: str, job: str = "celery-exporter"
    ) -> Doc:
        """An input series of celery_queue_length for one queue as one replica reports it."""
        labels = f'job="{job}",instance="{instance}",pod="{pod}",queue_name="{queue}"'
        return {"series": f"celery_queue_length{{{labels}}}", "values": values}

    naive = f'sum(celery_queue_length{{job="celery-exporter", queue_name="{QUEUE}"}})'
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Two replicas poll the broker at different moments: 12 and 13 messages.
                    series("celery-exporter-a", "127.0.0.1:9808", QUEUE, "12x5"),
                    series("celery-exporter-b", "127.0.0.2:9808", QUEUE, "13x5"),
                    series("celery-exporter-a", "127.0.0.1:9808", "billing", "40x5"),
                    series("celery-exporter-b", "127.0.0.2:9808", "billing", "40x5"),
                    series("worker-1", "127.0.0.3:9809", QUEUE, "99x5", job="other"),
                ],
                "promql_expr_test": [
                    {
                        "expr": meta["query"],
                        "eval_time": "4m",
                        "exp_samples": [{"labels": "{}", "value": 13}],
                    },
                    # Without the max, the two replicas add up: what the query avoids.
                    {
                        "expr": naive,
                        "eval_time": "4m",
                        "exp_samples": [{"labels": "{}", "value": 25}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "keda-query.yml").write_text(yaml.safe_dump(tests))
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "keda-query.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --- the docs ----------------------------------------------------------------------------------


def readme_section(text: str, heading: str) -> str:
    """A README section's text, from its heading to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    _, found, rest = text.partition(heading + "\n")
    assert found, heading
    return rest.split(f"\n{level} ", 1)[0]


def test_readme_explains_autoscaling_workers() -> None:
    """The README's "Autoscaling workers" names both examples, when to use each and the auth note."""
    section = readme_section((ROOT / "README.md").read_text(), "## Autoscaling workers")
    for needed in (
        "deploy/kubernetes/keda/", "scaledobject-metrics-api.yaml", "scaledobject-prometheus.yaml",
        "basic-auth.yaml", "/api/v1/queues", "--queue-interval", "max without (instance, pod)",
        "authMode: basic", "TriggerAuthentication", "fallback", "cloudcoil-models-keda",
    ):  # fmt: skip
        assert needed in section, needed


def test_kubernetes_readme_points_at_the_keda_examples() -> None:
    """deploy/kubernetes/README.md names the keda/ folder, its files and that -k leaves them out."""
    text = (KUBERNETES / "README.md").read_text()
    assert "`keda/`" in text
    for path in KEDA.glob("*.yaml"):
        assert path.name in text, path.name
    assert "kubectl apply -f deploy/kubernetes/keda/" in text
