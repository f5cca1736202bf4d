#!/usr/bin/env python3
"""Static checks of the deployment files, for machines without helm/kubectl.

    python3 helm/check_chart.py

What it checks (and what it cannot):
  * every YAML file under k8s/, docker/ and the chart's Chart.yaml/values.yaml
    parses (yaml.safe_load_all);
  * the Grafana dashboard JSON parses and every metric it queries is one the
    Rust code registers; the same for the PrometheusRule template and
    docs/operations.md;
  * every chart template has balanced `{{ }}`, balanced if/range/with/define
    ... end blocks, `include`s only defined templates, and references only
    `.Values` paths that exist in values.yaml (and only known per-service
    fields on `$svc`);
  * the TOML configs in k8s/01-config.yaml parse, and each section/key exists
    in the Rust config structs (the services deny unknown fields).
It does NOT render the templates (no Go template engine here), so it cannot
prove the rendered YAML is valid Kubernetes; `helm lint` / `helm template`
and `kubectl apply --dry-run=server` remain the real checks.
"""

import glob
import json
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "fleetwatch")
problems: list[str] = []


def rel(p: str) -> str:
    return os.path.relpath(p, ROOT)


def check_yaml() -> None:
    files = sorted(
        glob.glob(os.path.join(ROOT, "k8s", "**", "*.yaml"), recursive=True)
        + glob.glob(os.path.join(ROOT, "docker", "*.yaml"))
        + [os.path.join(CHART, "Chart.yaml"), os.path.join(CHART, "values.yaml")]
    )
    for f in files:
        try:
            docs = [d for d in yaml.safe_load_all(open(f)) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"{rel(f)}: YAML does not parse: {e}")
            continue
        for d in docs:
            if "k8s" in f and not {"apiVersion", "kind", "metadata"} <= set(d):
                problems.append(f"{rel(f)}: a document lacks apiVersion/kind/metadata")
        print(f"ok  yaml  {rel(f)} ({len(docs)} documents)")


def registered_metrics() -> set[str]:
    names: set[str] = set()
    for f in glob.glob(os.path.join(ROOT, "crates", "**", "*.rs"), recursive=True) + glob.glob(
        os.path.join(ROOT, "services", "**", "*.rs"), recursive=True
    ):
        names |= set(re.findall(r'"(fleetwatch_[a-z0-9_]+)"', open(f).read()))
    return names


def metric_refs(text: str) -> set[str]:
    out = set()
    for m in re.findall(r"\bfleetwatch_[a-z0-9_]+", text):
        for suffix in ("_bucket", "_sum", "_count"):
            if m.endswith(suffix) and m.endswith("_seconds" + suffix):
                m = m[: -len(suffix)]
        out.add(m)
    return out


def check_metrics() -> None:
    known = registered_metrics()
    dash_path = os.path.join(CHART, "dashboards", "fleetwatch.json")
    try:
        dash = json.load(open(dash_path))
    except json.JSONDecodeError as e:
        problems.append(f"{rel(dash_path)}: JSON does not parse: {e}")
        return
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    if not exprs:
        problems.append(f"{rel(dash_path)}: no queries")
    print(f"ok  json  {rel(dash_path)} ({len(dash['panels'])} panels)")
    sources = {
        rel(dash_path): "\n".join(exprs),
        "helm/fleetwatch/templates/prometheusrule.yaml": open(
            os.path.join(CHART, "templates", "prometheusrule.yaml")
        ).read(),
    }
    doc = os.path.join(ROOT, "docs", "operations.md")
    if os.path.exists(doc):
        sources[rel(doc)] = open(doc).read()
    for name, text in sources.items():
        refs = metric_refs(text)
        # Names that are not metrics: a consumer group prefix and label values.
        refs -= {"fleetwatch_ingest_http_requests_per_second"}  # documented adapter-made metric
        unknown = sorted(r for r in refs if r not in known and not r.startswith("fleetwatch_persistence-"))
        for u in unknown:
            problems.append(f"{name}: metric {u} is not registered by the Rust code")
        print(f"ok  metrics {name}: {len(refs)} names checked")


ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)
BLOCK_OPEN = re.compile(r"^(if|range|with|define)\b")
SVC_FIELDS_OPTIONAL = {
    # Documented in values.yaml's per-service field list but absent from the entries.
    "configName",
    "probes",
}


def values_has(values: dict, path: list[str]) -> bool:
    cur = values
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return False
        cur = cur[key]
    return True


def check_templates() -> None:
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    svc_fields: set[str] = set()
    svc_nested: dict[str, set[str]] = {}
    for svc in values["services"].values():
        svc_fields |= set(svc)
        for k, v in svc.items():
            if isinstance(v, dict):
                svc_nested.setdefault(k, set()).update(v)
    files = sorted(glob.glob(os.path.join(CHART, "templates", "*")))
    defined: set[str] = set()
    included: list[tuple[str, str]] = []
    for f in files:
        text = open(f).read()
        opens, closes = text.count("{{"), text.count("}}")
        if opens != closes:
            problems.append(f"{rel(f)}: {opens} '{{{{' vs {closes} '}}}}'")
        stack: list[str] = []
        for action in ACTION.findall(text):
            if action.startswith("/*"):
                continue
            a = action.strip()
            m = BLOCK_OPEN.match(a)
            if m:
                stack.append(m.group(1))
                if m.group(1) == "define":
                    defined.add(re.match(r'define\s+"([^"]+)"', a).group(1))
            elif a == "end":
                if not stack:
                    problems.append(f"{rel(f)}: `end` without an open block")
                else:
                    stack.pop()
            for name in re.findall(r'include\s+"([^"]+)"', a):
                included.append((rel(f), name))
            for path in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", a):
                parts = path.strip(".").split(".")
                if parts[0] == "services" and len(parts) > 1:
                    parts = parts[:2]  # e.g. .Values.services.ingest
                if not values_has(values, parts):
                    problems.append(f"{rel(f)}: .Values.{'.'.join(parts)} is not in values.yaml")
            for field, sub in re.findall(r"\$svc\.([A-Za-z_]+)(?:\.([A-Za-z_]+))?", a):
                if field not in svc_fields and field not in SVC_FIELDS_OPTIONAL:
                    problems.append(f"{rel(f)}: $svc.{field} is not a per-service field in values.yaml")
                if sub and field in svc_nested and sub not in svc_nested[field]:
                    problems.append(f"{rel(f)}: $svc.{field}.{sub} is not in values.yaml")
        if stack:
            problems.append(f"{rel(f)}: unclosed blocks {stack}")
        print(f"ok  template {rel(f)}")
    for f, name in included:
        if name not in defined:
            problems.append(f"{f}: include of undefined template {name!r}")
    # Autoscaling sub-keys used by the templates.
    for svc_name, svc in values["services"].items():
        a = svc.get("autoscaling", {})
        if a.get("mode") not in ("keda", "hpa", "none"):
            problems.append(f"values: services.{svc_name}.autoscaling.mode is {a.get('mode')!r}")
        if a.get("mode") == "keda" and not svc.get("consumes"):
            problems.append(f"values: services.{svc_name} uses keda but consumes nothing")


def rust_fields(path: str, struct: str) -> set[str]:
    text = open(os.path.join(ROOT, path)).read()
    m = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        problems.append(f"{path}: struct {struct} not found")
        return set()
    return set(re.findall(r"pub (\w+):", m.group(1)))


# A section whose struct lives in a shared crate: (path, struct).
OBJECT_STORE = ("crates/objectstore/src/lib.rs", "ObjectStoreConfig")


def check_toml() -> None:
    common = {
        "log": rust_fields("crates/common/src/telemetry.rs", "LogConfig"),
        "admin": rust_fields("crates/common/src/admin.rs", "AdminConfig"),
        "kafka": rust_fields("crates/kafka/src/config.rs", "KafkaConfig"),
        "database": rust_fields("crates/db/src/lib.rs", "DbConfig"),
        "topics": rust_fields("crates/kafka/src/config.rs", "TopicNames"),
        "object_store": rust_fields("crates/objectstore/src/lib.rs", "ObjectStoreConfig"),
    }
    schemas = {
        "ingest": ("services/ingest/src/config.rs", {
            "http": "HttpConfig", "grpc": "GrpcConfig", "mqtt": "MqttConfig", "limits": "LimitsConfig",
            "persistence": "PersistenceConfig", "auth": "AuthConfig"}),
        "persistence": ("services/persistence/src/config.rs", {
            "grpc": "GrpcConfig", "object_store": OBJECT_STORE, "retention": "RetentionConfig",
            "writer": "WriterConfig"}),
        "incident": ("services/incident/src/config.rs", {
            "grpc": "GrpcConfig", "engine": "EngineConfig", "evidence": "EvidenceConfig",
            "outbox": "OutboxConfig"}),
        "inference": ("services/inference/src/config.rs", {
            "grpc": "GrpcConfig", "object_store": OBJECT_STORE, "model": "ModelConfig",
            "pipeline": "PipelineConfig"}),
    }
    cm = list(yaml.safe_load_all(open(os.path.join(ROOT, "k8s", "01-config.yaml"))))
    data = cm[0]["data"]
    schemas["ingest-mqtt"] = schemas["ingest"]  # the same binary as the MQTT bridge
    if set(data) != {f"{s}.toml" for s in schemas}:
        problems.append(f"k8s/01-config.yaml: config keys {sorted(data)} do not match {sorted(schemas)}")
    for svc, (path, sections) in schemas.items():
        top = rust_fields(path, "Config")
        doc = tomllib.loads(data[f"{svc}.toml"])
        for section, table in doc.items():
            if section not in top:
                problems.append(f"k8s/01-config.yaml {svc}.toml: unknown section [{section}]")
                continue
            where = sections[section] if section in sections else None
            if isinstance(where, tuple):
                fields = rust_fields(*where)
            else:
                fields = common.get(section) or rust_fields(path, where)
            for key in table:
                if key not in fields:
                    problems.append(f"k8s/01-config.yaml {svc}.toml: unknown key {section}.{key}")
        print(f"ok  toml  k8s/01-config.yaml {svc}.toml ({len(doc)} sections)")
    fleetctl = tomllib.loads(cm[1]["data"]["fleetctl.toml"])
    allowed = rust_fields("crates/fleetctl/src/settings.rs", "TopicSettings")
    for key in fleetctl.get("topics", {}):
        if key not in allowed:
            problems.append(f"k8s/01-config.yaml fleetctl.toml: unknown key topics.{key}")
    print("ok  toml  k8s/01-config.yaml fleetctl.toml")


def main() -> int:
    check_yaml()
    check_metrics()
    check_templates()
    check_toml()
    for p in problems:
        print("FAIL", p)
    print(f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
