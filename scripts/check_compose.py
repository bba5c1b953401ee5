#!/usr/bin/env python3
"""Static checks of writ's deployment and monitoring files.

Run by scripts/check-dashboards (as `.venv/bin/python scripts/check_compose.py`;
needs PyYAML, which scripts/setup installs). It checks, without Docker:

- docker-compose.yml: every service has an image or a build, the build context
  and Dockerfile exist, every bind-mounted host path exists in the repo, every
  named volume is declared, every depends_on target is a service;
- the Dockerfile's COPY sources exist;
- dashboards/prometheus.yml's rule files exist next to it and are mounted next
  to it in the Prometheus container;
- the Grafana dashboard JSON loads, uses the provisioned datasource uid, and
  sits where the dashboard provider looks;
- docker/writ.toml is config/writ.toml except for the container addresses;
- every writ_* metric named in the dashboard, the alerts and their tests is one
  the daemon exports (WRIT_METRICS below).

With --dashboard-rules PATH it also writes the dashboard's PromQL as a rule file
(Grafana variables replaced) so that `promtool check rules PATH` parses it.
Exits 1 with one line per problem.
"""

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("check_compose: PyYAML is missing; run scripts/setup (it installs pyyaml into .venv)")

# The metrics writ exports, name -> type: read from the METRICS table in
# src/telemetry/mod.rs (the daemon describes exactly these), so this check
# cannot drift from the code. Histograms also have _bucket, _sum and _count
# series.
def _writ_metrics():
    src = (ROOT / "src" / "telemetry" / "mod.rs").read_text()
    found = dict(re.findall(r'\(\s*"(writ_[a-z0-9_]+)",\s*"(counter|gauge|histogram)"', src))
    if not found:
        sys.exit("check_compose: no METRICS table found in src/telemetry/mod.rs")
    return found

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])writ_[a-z_]+")

# docker/writ.toml may differ from config/writ.toml only in these fields.
CONTAINER_CONFIG_FIELDS = {
    ("redis", "url"): "redis://redis:6379",
    ("mongodb", "uri"): "mongodb://mongo:27017/?replicaSet=rs0",
    ("daemon", "metrics_listen"): "0.0.0.0:9108",
}

ROOT = Path(__file__).resolve().parent.parent
WRIT_METRICS = _writ_metrics()
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "dashboards/grafana/writ.json"
PROMETHEUS = ROOT / "dashboards/prometheus.yml"
ALERTS = ROOT / "dashboards/alerts.yml"
ALERTS_TEST = ROOT / "dashboards/alerts_test.yml"
DATASOURCES = ROOT / "dashboards/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "dashboards/grafana/provisioning/dashboards/writ.yml"
DEFAULT_CONFIG = ROOT / "config/writ.toml"
CONTAINER_CONFIG = ROOT / "docker/writ.toml"

errors = []
checks = 0


def check(ok, message):
    global checks
    checks += 1
    if not ok:
        errors.append(message)
    return ok


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml(path):
    if not check(path.is_file(), f"{rel(path)}: missing"):
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        check(False, f"{rel(path)}: invalid YAML: {e}")
        return None


def inside_repo(path):
    try:
        path.resolve().relative_to(ROOT)
        return True
    except ValueError:
        return False


def parse_volume(spec):
    """(kind, source, target) of a short or long volume entry."""
    if isinstance(spec, dict):
        return spec.get("type", "volume"), spec.get("source"), spec.get("target")
    parts = str(spec).split(":")
    if len(parts) == 1:
        return "anonymous", None, parts[0]
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    return kind, source, target


def check_compose():
    """Returns {service: {container path: host path}} of the bind mounts."""
    compose = load_yaml(COMPOSE)
    mounts = {}
    if not isinstance(compose, dict):
        check(False, "docker-compose.yml: not a mapping")
        return mounts
    check(compose.get("name") == "writ", "docker-compose.yml: top-level `name: writ` missing")
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    check(bool(services), "docker-compose.yml: no services")
    for want in ("redis", "mongo", "mongo-init", "writ", "prometheus", "grafana"):
        check(want in services, f"docker-compose.yml: service {want!r} missing")

    for name, svc in services.items():
        where = f"docker-compose.yml: service {name!r}"
        if not check(isinstance(svc, dict), f"{where}: not a mapping"):
            continue
        check("image" in svc or "build" in svc, f"{where}: has neither image nor build")

        build = svc.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            if check(context.is_dir() and inside_repo(context), f"{where}: build context {build.get('context')!r} is not a directory in the repo"):
                dockerfile = context / build.get("dockerfile", "Dockerfile")
                if check(dockerfile.is_file(), f"{where}: {rel(dockerfile)} missing"):
                    check_dockerfile(dockerfile, context)

        mounts[name] = {}
        for spec in svc.get("volumes") or []:
            kind, source, target = parse_volume(spec)
            if kind == "bind":
                host = (COMPOSE.parent / Path(source).expanduser()).resolve()
                check(inside_repo(host) and host.exists(), f"{where}: bind-mounted {source!r} does not exist in the repo")
                mounts[name][target] = host
            elif kind == "volume":
                check(source in declared_volumes, f"{where}: named volume {source!r} is not declared under top-level volumes")

        depends = svc.get("depends_on") or []
        if isinstance(depends, dict):
            for target, cond in depends.items():
                check(target in services, f"{where}: depends_on unknown service {target!r}")
                condition = (cond or {}).get("condition", "service_started")
                check(condition in ("service_started", "service_healthy", "service_completed_successfully"),
                      f"{where}: depends_on {target!r} has unknown condition {condition!r}")
                if condition == "service_healthy":
                    check("healthcheck" in services.get(target, {}),
                          f"{where}: waits for {target!r} to be healthy, but {target!r} has no healthcheck")
        else:
            for target in depends:
                check(target in services, f"{where}: depends_on unknown service {target!r}")

    writ = services.get("writ") or {}
    check(any(str(p).split(":")[-1] == "9108" for p in writ.get("ports") or []),
          "docker-compose.yml: service 'writ' does not publish port 9108")
    check(mounts.get("writ", {}).get("/etc/writ/writ.toml") == CONTAINER_CONFIG.resolve(),
          "docker-compose.yml: service 'writ' must mount ./docker/writ.toml at /etc/writ/writ.toml")
    return mounts


COPY_RE = re.compile(r"^\s*(COPY|ADD)\s+(.*)$", re.IGNORECASE)


def check_dockerfile(dockerfile, context):
    for lineno, line in enumerate(dockerfile.read_text().splitlines(), 1):
        m = COPY_RE.match(line)
        if not m:
            continue
        args = m.group(2).split()
        if any(a.startswith("--from") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        for source in args[:-1]:
            check((context / source).exists(), f"{rel(dockerfile)}:{lineno}: COPY source {source!r} missing")


def check_prometheus(mounts):
    config = load_yaml(PROMETHEUS)
    if not isinstance(config, dict):
        return
    jobs = {j.get("job_name"): j for j in config.get("scrape_configs") or []}
    job = jobs.get("writ")
    if check(job is not None, "dashboards/prometheus.yml: no scrape job 'writ'"):
        targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        check("writ:9108" in targets, "dashboards/prometheus.yml: job 'writ' does not scrape writ:9108")
    prom_mounts = mounts.get("prometheus", {})
    in_container = {host: target for target, host in prom_mounts.items()}
    config_target = in_container.get(PROMETHEUS.resolve())
    check(config_target == "/etc/prometheus/prometheus.yml",
          "docker-compose.yml: prometheus must mount dashboards/prometheus.yml at /etc/prometheus/prometheus.yml")
    rule_files = config.get("rule_files") or []
    check(bool(rule_files), "dashboards/prometheus.yml: no rule_files")
    for rule_file in rule_files:
        check(not Path(rule_file).is_absolute(), f"dashboards/prometheus.yml: rule file {rule_file!r} should be relative")
        local = (PROMETHEUS.parent / rule_file).resolve()
        check(local.is_file(), f"dashboards/prometheus.yml: rule file {rule_file!r} missing next to it")
        if config_target:
            want = str(Path(config_target).parent / rule_file)
            check(prom_mounts.get(want) == local,
                  f"docker-compose.yml: prometheus must mount {rel(local)} at {want} (rule_files of dashboards/prometheus.yml)")


def check_grafana(mounts):
    """Returns the dashboard text ("" if it does not load)."""
    if not check(DASHBOARD.is_file(), f"{rel(DASHBOARD)}: missing"):
        return ""
    text = DASHBOARD.read_text()
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        check(False, f"{rel(DASHBOARD)}: invalid JSON: {e}")
        return ""
    check(dashboard.get("uid") == "writ", f"{rel(DASHBOARD)}: uid is not 'writ'")
    check(dashboard.get("title") == "writ", f"{rel(DASHBOARD)}: title is not 'writ'")

    datasources = load_yaml(DATASOURCES) or {}
    uids = {d.get("uid") for d in datasources.get("datasources") or []}
    check("prometheus" in uids, f"{rel(DATASOURCES)}: no datasource with uid 'prometheus'")

    panel_ids = set()
    for panel in walk_panels(dashboard.get("panels") or []):
        title = panel.get("title", "?")
        check(panel.get("id") not in panel_ids, f"{rel(DASHBOARD)}: panel id {panel.get('id')} used twice")
        panel_ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        check(bool(panel.get("targets")), f"{rel(DASHBOARD)}: panel {title!r} has no queries")
        for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets") or []]:
            check(isinstance(ds, dict) and ds.get("uid") in uids,
                  f"{rel(DASHBOARD)}: panel {title!r} uses datasource {ds!r}, not a provisioned uid {sorted(uids)}")
        for target in panel.get("targets") or []:
            check(bool(target.get("expr")), f"{rel(DASHBOARD)}: panel {title!r} has a query without expr")

    providers = load_yaml(DASHBOARD_PROVIDERS) or {}
    paths = [p.get("options", {}).get("path") for p in providers.get("providers") or []]
    grafana_mounts = mounts.get("grafana", {})
    dashboard_target = {h: t for t, h in grafana_mounts.items()}.get(DASHBOARD.resolve())
    check(dashboard_target is not None and str(Path(dashboard_target).parent) in paths,
          f"docker-compose.yml: grafana must mount {rel(DASHBOARD)} into a provider path {paths}")
    for sub in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{sub}"
        host = (ROOT / "dashboards/grafana/provisioning" / sub).resolve()
        check(grafana_mounts.get(target) == host or grafana_mounts.get("/etc/grafana/provisioning") == host.parent,
              f"docker-compose.yml: grafana must mount {rel(host)} at {target}")
    return text


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def dashboard_exprs(text):
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError:
        return []
    exprs = []
    for panel in walk_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                exprs.append((panel.get("title", "?"), target["expr"]))
    return exprs


def base_name(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and WRIT_METRICS.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


def alert_exprs():
    try:
        groups = (yaml.safe_load(ALERTS.read_text()) or {}).get("groups") or []
    except (OSError, yaml.YAMLError):
        return []  # reported by promtool and check_metric_names
    return [(f"alert {r.get('alert') or r.get('record')}", str(r.get("expr", "")))
            for g in groups for r in g.get("rules") or []]


def check_metric_names(dashboard_text):
    """Every writ_* name anywhere in the dashboard, alerts and alert tests
    (queries, descriptions, test series) must be one writ exports."""
    used_on_dashboard = set()
    for path, text in [(DASHBOARD, dashboard_text), (ALERTS, None), (ALERTS_TEST, None)]:
        if text is None:
            if not check(path.is_file(), f"{rel(path)}: missing"):
                continue
            text = path.read_text()
        for name in sorted(set(METRIC_RE.findall(text))):
            base = base_name(name)
            check(base in WRIT_METRICS,
                  f"{rel(path)}: {name!r} is not a metric writ exports (WRIT_METRICS in scripts/check_compose.py)")
            if path == DASHBOARD:
                used_on_dashboard.add(base)
    # In PromQL a bare histogram name selects nothing.
    for where, expr in [(f"{rel(DASHBOARD)}: panel {t!r}", e) for t, e in dashboard_exprs(dashboard_text)] + \
            [(f"{rel(ALERTS)}: {w}", e) for w, e in alert_exprs()]:
        for name in set(METRIC_RE.findall(expr)):
            check(WRIT_METRICS.get(name) != "histogram",
                  f"{where}: histogram {name!r} queried without _bucket/_sum/_count")
    for name in sorted(set(WRIT_METRICS) - used_on_dashboard):
        print(f"check_compose: note: {name} is not on the dashboard", file=sys.stderr)


def check_container_config():
    try:
        default = tomllib.loads(DEFAULT_CONFIG.read_text())
        container = tomllib.loads(CONTAINER_CONFIG.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        check(False, f"config: cannot load {rel(DEFAULT_CONFIG)} / {rel(CONTAINER_CONFIG)}: {e}")
        return
    for (section, key), want in CONTAINER_CONFIG_FIELDS.items():
        got = container.get(section, {}).get(key)
        check(got == want, f"{rel(CONTAINER_CONFIG)}: [{section}] {key} is {got!r}, want {want!r}")
        container.get(section, {}).pop(key, None)
        default.get(section, {}).pop(key, None)
    drifted = []
    for section in sorted(set(default) | set(container)):
        a, b = default.get(section), container.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            drifted += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            drifted.append(section)
    check(not drifted, f"{rel(CONTAINER_CONFIG)} differs from {rel(DEFAULT_CONFIG)} in {', '.join(drifted)}: "
                       f"only {', '.join(sorted('.'.join(k) for k in CONTAINER_CONFIG_FIELDS))} may differ")


GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$partition": ".*",
}


def write_dashboard_rules(path, dashboard_text):
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs(dashboard_text)):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        check("$" not in expr, f"{rel(DASHBOARD)}: panel {title!r}: unknown Grafana variable in {expr!r}")
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    Path(path).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dashboard-rules", metavar="PATH",
                        help="also write the dashboard's PromQL as a rule file for `promtool check rules`")
    args = parser.parse_args()

    mounts = check_compose()
    check_prometheus(mounts)
    dashboard_text = check_grafana(mounts)
    check_metric_names(dashboard_text)
    check_container_config()
    if args.dashboard_rules:
        write_dashboard_rules(args.dashboard_rules, dashboard_text)

    if errors:
        for e in errors:
            print(f"check_compose: FAIL: {e}", file=sys.stderr)
        print(f"check_compose: {len(errors)} of {checks} checks failed", file=sys.stderr)
        return 1
    print(f"check_compose: all {checks} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
