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
- the profile "cluster" (CLUSTER_* below): its services exist and carry the
  profile while the others carry none; the six Redis nodes run with the
  cluster flags, announce their own service name and keep their data in
  volumes of their own; redis-cluster-init waits for all of them and its
  `redis-cli --cluster create` names exactly those six (its script also passes
  `sh -n`); writ-1 and writ-2 run the image of writ with
  docker/writ-cluster.toml (config/writ.toml except for the container
  addresses and the cluster keys), distinct consumer names and metrics ports,
  after redis-cluster-init and mongo-init complete; dashboards/
  prometheus-cluster.yml scrapes exactly those two; no service outside the
  profile depends on one inside it, and no two services publish one host port;
- every writ_* metric named in the dashboard, the alerts and their tests is one
  the daemon exports (WRIT_METRICS below).

With --dashboard-rules PATH it also writes the dashboard's PromQL as a rule file
(Grafana variables replaced) so that `promtool check rules PATH` parses it.
Exits 1 with one line per problem.
"""

import argparse
import copy
import json
import re
import shlex
import shutil
import subprocess
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

# docker/writ-cluster.toml may differ from config/writ.toml only in the fields
# above (but its redis.url must list cluster nodes: cluster_seed_problem) and
# these.
CLUSTER_CONFIG_FIELDS = {
    ("redis", "cluster"): True,
    ("redis", "min_replicas_acked"): 1,
    ("redis", "replica_ack_timeout_ms"): 1000,
}

# The profile "cluster" of docker-compose.yml.
CLUSTER_PROFILE = "cluster"
CLUSTER_NODES = [f"redis-node-{i}" for i in range(1, 7)]
CLUSTER_NODE_PORT = 6379
CLUSTER_MASTERS = 3
CLUSTER_INIT = "redis-cluster-init"
CLUSTER_DAEMONS = ["writ-1", "writ-2"]
CLUSTER_PROMETHEUS = "prometheus-cluster"
# Flags every node's redis-server needs, besides
# --cluster-announce-hostname <its service name>.
CLUSTER_NODE_FLAGS = {
    "--cluster-enabled": "yes",
    "--cluster-node-timeout": "2000",
    "--appendonly": "yes",
    "--appendfsync": "always",
    "--cluster-preferred-endpoint-type": "hostname",
}
DEFAULT_SERVICES = ("redis", "mongo", "mongo-init", "writ", "prometheus", "grafana")

ROOT = Path(__file__).resolve().parent.parent
WRIT_METRICS = _writ_metrics()
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "dashboards/grafana/writ.json"
PROMETHEUS = ROOT / "dashboards/prometheus.yml"
PROMETHEUS_CLUSTER = ROOT / "dashboards/prometheus-cluster.yml"
ALERTS = ROOT / "dashboards/alerts.yml"
ALERTS_TEST = ROOT / "dashboards/alerts_test.yml"
DATASOURCES = ROOT / "dashboards/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "dashboards/grafana/provisioning/dashboards/writ.yml"
DEFAULT_CONFIG = ROOT / "config/writ.toml"
CONTAINER_CONFIG = ROOT / "docker/writ.toml"
CLUSTER_CONFIG = ROOT / "docker/writ-cluster.toml"

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
    """Returns the services and {service: {container path: host path}} of the
    bind mounts."""
    compose = load_yaml(COMPOSE)
    mounts = {}
    if not isinstance(compose, dict):
        check(False, "docker-compose.yml: not a mapping")
        return {}, mounts
    check(compose.get("name") == "writ", "docker-compose.yml: top-level `name: writ` missing")
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    check(bool(services), "docker-compose.yml: no services")
    for want in DEFAULT_SERVICES:
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
    check_host_ports(services)
    return services, mounts


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


def check_prometheus(mounts, path=PROMETHEUS, service="prometheus", targets=("writ:9108",), exactly=False):
    """The Prometheus config `path`, mounted by `service`, has a job 'writ'
    that scrapes `targets` (and nothing else if `exactly`)."""
    config = load_yaml(path)
    if not isinstance(config, dict):
        return
    name = rel(path)
    jobs = {j.get("job_name"): j for j in config.get("scrape_configs") or []}
    job = jobs.get("writ")
    if check(job is not None, f"{name}: no scrape job 'writ'"):
        scraped = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        for target in targets:
            check(target in scraped, f"{name}: job 'writ' does not scrape {target}")
        if exactly:
            check(sorted(scraped) == sorted(targets),
                  f"{name}: job 'writ' scrapes {sorted(scraped)}, want exactly {sorted(targets)}")
    prom_mounts = mounts.get(service, {})
    in_container = {host: target for target, host in prom_mounts.items()}
    config_target = in_container.get(path.resolve())
    check(config_target == "/etc/prometheus/prometheus.yml",
          f"docker-compose.yml: {service} must mount {name} at /etc/prometheus/prometheus.yml")
    rule_files = config.get("rule_files") or []
    check(bool(rule_files), f"{name}: no rule_files")
    for rule_file in rule_files:
        check(not Path(rule_file).is_absolute(), f"{name}: rule file {rule_file!r} should be relative")
        local = (path.parent / rule_file).resolve()
        check(local.is_file(), f"{name}: rule file {rule_file!r} missing next to it")
        if config_target:
            want = str(Path(config_target).parent / rule_file)
            check(prom_mounts.get(want) == local,
                  f"docker-compose.yml: {service} must mount {rel(local)} at {want} (rule_files of {name})")


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
    (queries, descriptions, test series) must be one writ exports, and every
    metric writ exports must be on the dashboard."""
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
    # An exported metric no panel shows is one an operator never sees.
    for name in sorted(set(WRIT_METRICS) - used_on_dashboard):
        check(False, f"{rel(DASHBOARD)}: {name} is exported but on no panel; add it to a panel "
                     "(or drop it from METRICS in src/telemetry/mod.rs)")


def check_container_config(path=CONTAINER_CONFIG, fields=CONTAINER_CONFIG_FIELDS):
    """`path` is config/writ.toml except for `fields`: {(section, key): want},
    where want is the value or a function of the value that returns a problem
    (or None). Returns the loaded config (None if it does not load)."""
    try:
        default = tomllib.loads(DEFAULT_CONFIG.read_text())
        container = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        check(False, f"config: cannot load {rel(DEFAULT_CONFIG)} / {rel(path)}: {e}")
        return None
    loaded = copy.deepcopy(container)
    for (section, key), want in fields.items():
        got = container.get(section, {}).get(key)
        if callable(want):
            problem = want(got)
            check(problem is None, f"{rel(path)}: [{section}] {key} is {got!r}: {problem}")
        else:
            check(got == want, f"{rel(path)}: [{section}] {key} is {got!r}, want {want!r}")
        container.get(section, {}).pop(key, None)
        default.get(section, {}).pop(key, None)
    drifted = []
    for section in sorted(set(default) | set(container)):
        a, b = default.get(section), container.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            drifted += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            drifted.append(section)
    check(not drifted, f"{rel(path)} differs from {rel(DEFAULT_CONFIG)} in {', '.join(drifted)}: "
                       f"only {', '.join(sorted('.'.join(k) for k in fields))} may differ")
    return loaded


def published_ports(svc):
    """(host ip, host port, container port, protocol) of each published port
    of a service (short or long syntax); host port None if Docker picks one."""
    out = []
    for spec in svc.get("ports") or []:
        if isinstance(spec, dict):
            out.append((str(spec.get("host_ip", "")), str(spec["published"]) if spec.get("published") else None,
                        str(spec.get("target")), spec.get("protocol", "tcp")))
            continue
        spec, _, protocol = str(spec).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            out.append(("", None, parts[0], protocol or "tcp"))
        elif len(parts) == 2:
            out.append(("", parts[0] or None, parts[1], protocol or "tcp"))
        else:
            out.append((parts[0], parts[1] or None, parts[2], protocol or "tcp"))
    return out


def check_host_ports(services):
    """No two services publish the same host port: `--profile cluster up`
    starts every service at once."""
    owner = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        for _, host_port, _, protocol in published_ports(svc):
            if host_port is None:
                continue
            key = (host_port, protocol)
            check(key not in owner,
                  f"docker-compose.yml: services {owner.get(key)!r} and {name!r} both publish host port {host_port}/{protocol}")
            owner.setdefault(key, name)


def command_args(svc):
    command = svc.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(a) for a in command]


def environment(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in map(str, env))
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def depends_on(svc):
    """{target: condition} of a service."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {t: (c or {}).get("condition", "service_started") for t, c in deps.items()}


def cluster_seed_problem(urls):
    """redis.url of the cluster config: seed URLs, each a cluster node."""
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls:
        return "want one or more redis:// URLs of the cluster nodes"
    for url in urls:
        m = re.fullmatch(r"redis://([^/:@]+):(\d+)/?", str(url))
        if not m or m.group(1) not in CLUSTER_NODES or int(m.group(2)) != CLUSTER_NODE_PORT:
            return f"{url!r} is not redis://<one of {', '.join(CLUSTER_NODES)}>:{CLUSTER_NODE_PORT}"
    if len(set(urls)) != len(urls):
        return "a seed is listed twice"
    return None


# $NAME, ${NAME} and ${NAME:-word}-style references (the word is ignored).
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
ASSIGN_RE = re.compile(r"""^[ \t]*([A-Za-z_][A-Za-z0-9_]*)=(?:"([^"]*)"|'([^']*)'|(\S*))[ \t]*$""", re.MULTILINE)


def expand(text, variables):
    return VAR_RE.sub(lambda v: variables.get(v.group(1) or v.group(2), v.group(0)), text)


def cluster_create_args(text, env):
    """The node arguments of the `redis-cli --cluster create` in the shell
    `text`, its variables expanded (from `env`, the service's environment,
    and the plain `NAME=value` assignments before it), and its options; None
    if there is no such command."""
    m = re.search(r"redis-cli\b[^\n]*?--cluster\s+create\s+([^\n]*)", text)
    if not m:
        return None
    variables = dict(env)
    for a in ASSIGN_RE.finditer(text[: text.rfind("\n", 0, m.start()) + 1]):
        value = next(g for g in (a.group(2), a.group(3), a.group(4)) if g is not None)
        variables[a.group(1)] = value if a.group(3) is not None else expand(value, variables)
    words = shlex.split(expand(m.group(1), variables), comments=True)
    nodes, options = [], []
    for word in words:
        if options or word.startswith("-"):
            options.append(word)
        else:
            nodes.extend(word.split())
    return nodes, options


def check_cluster_profile(services, mounts):
    where = "docker-compose.yml"
    profile_services = CLUSTER_NODES + [CLUSTER_INIT] + CLUSTER_DAEMONS + [CLUSTER_PROMETHEUS]
    for name in profile_services:
        svc = services.get(name)
        if check(isinstance(svc, dict), f"{where}: service {name!r} of profile {CLUSTER_PROFILE!r} missing"):
            check(svc.get("profiles") == [CLUSTER_PROFILE],
                  f"{where}: service {name!r} must have `profiles: [{CLUSTER_PROFILE}]`, has {svc.get('profiles')!r}")
    for name in DEFAULT_SERVICES:
        check(not (services.get(name) or {}).get("profiles"),
              f"{where}: service {name!r} must have no profiles (plain `docker compose up` starts it)")
    # A service outside the profile must not need one inside it, or plain
    # `docker compose up` fails; one inside may need only services that the
    # profile enables (its own or those without profiles).
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        mine = set(svc.get("profiles") or [])
        for target in depends_on(svc):
            theirs = set((services.get(target) or {}).get("profiles") or [])
            check(not theirs or theirs & mine,
                  f"{where}: service {name!r} (profiles {sorted(mine)}) depends on {target!r}, "
                  f"which only profiles {sorted(theirs)} start")

    # The nodes.
    node_volumes = {}
    for name in CLUSTER_NODES:
        svc = services.get(name)
        if not isinstance(svc, dict):
            continue
        image = str(svc.get("image", ""))
        check(image.split(":")[0] == "redis" and image.split(":")[-1].startswith("7"),
              f"{where}: {name!r} must run image redis:7 (hostname announcement needs Redis 7.0+), runs {svc.get('image')!r}")
        args = command_args(svc)
        check(args[:1] == ["redis-server"], f"{where}: {name!r} command must start with redis-server")
        flags = {}
        for i, arg in enumerate(args):
            if arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
                flags[arg] = args[i + 1]
        for flag, want in list(CLUSTER_NODE_FLAGS.items()) + [("--cluster-announce-hostname", name)]:
            check(flags.get(flag) == want, f"{where}: {name!r} must run redis-server with {flag} {want} (has {flags.get(flag)!r})")
        data = [source for kind, source, target in map(parse_volume, svc.get("volumes") or [])
                if kind == "volume" and target == "/data"]
        if check(len(data) == 1, f"{where}: {name!r} must keep /data in a named volume"):
            check(data[0] not in node_volumes,
                  f"{where}: {name!r} and {node_volumes.get(data[0])!r} share volume {data[0]!r}; each node needs its own")
            node_volumes.setdefault(data[0], name)
        check("healthcheck" in svc, f"{where}: {name!r} has no healthcheck ({CLUSTER_INIT} waits for it)")

    # The one-shot that creates the cluster.
    init = services.get(CLUSTER_INIT)
    if isinstance(init, dict):
        deps = depends_on(init)
        for node in CLUSTER_NODES:
            check(deps.get(node) == "service_healthy",
                  f"{where}: {CLUSTER_INIT!r} must wait for {node!r} (depends_on condition: service_healthy)")
        check(str(init.get("restart", "no")) == "no", f"{where}: {CLUSTER_INIT!r} is a one-shot: restart must be \"no\"")
        args = command_args(init)
        # `$` in the compose file is compose's interpolation: a shell `$` is written `$$`.
        check("$" not in "\n".join(args).replace("$$", ""),
              f"{where}: {CLUSTER_INIT!r} command has a single `$`, which compose interpolates; write `$$`")
        text = "\n".join(args).replace("$$", "$")
        for target, host in mounts.get(CLUSTER_INIT, {}).items():
            if target in args and host.is_file():
                text += "\n" + host.read_text()
                if shutil.which("sh"):
                    syntax = subprocess.run(["sh", "-n", str(host)], capture_output=True, text=True)
                    check(syntax.returncode == 0, f"{rel(host)}: `sh -n` fails: {syntax.stderr.strip()}")
        created = cluster_create_args(text, environment(init))
        if check(created is not None, f"{where}: {CLUSTER_INIT!r} runs no `redis-cli --cluster create` (in its command or a script it mounts)"):
            nodes, options = created
            check(sorted(nodes) == sorted(f"{n}:{CLUSTER_NODE_PORT}" for n in CLUSTER_NODES),
                  f"{where}: {CLUSTER_INIT!r}: `redis-cli --cluster create` names {nodes}, "
                  f"want exactly {', '.join(f'{n}:{CLUSTER_NODE_PORT}' for n in CLUSTER_NODES)}")
            replicas = options[options.index("--cluster-replicas") + 1] if "--cluster-replicas" in options[:-1] else None
            want_replicas = len(CLUSTER_NODES) // CLUSTER_MASTERS - 1
            check(replicas == str(want_replicas),
                  f"{where}: {CLUSTER_INIT!r}: `--cluster-replicas` is {replicas!r}, want {want_replicas} "
                  f"({len(CLUSTER_NODES)} nodes = {CLUSTER_MASTERS} masters with a replica each)")
            check("--cluster-yes" in options,
                  f"{where}: {CLUSTER_INIT!r}: `redis-cli --cluster create` needs --cluster-yes (no terminal to answer it)")
        check("cluster_state:ok" in text,
              f"{where}: {CLUSTER_INIT!r} must skip the create when CLUSTER INFO already says cluster_state:ok")

    # The daemons and their config.
    cluster_config = check_container_config(CLUSTER_CONFIG, {
        **CONTAINER_CONFIG_FIELDS,
        ("redis", "url"): cluster_seed_problem,
        **CLUSTER_CONFIG_FIELDS,
    })
    listen = str(((cluster_config or {}).get("daemon") or {}).get("metrics_listen", ""))
    metrics_port = listen.rsplit(":", 1)[-1] if ":" in listen else None
    writ = services.get("writ") or {}
    names, host_ports = {}, {}
    for name in CLUSTER_DAEMONS:
        svc = services.get(name)
        if not isinstance(svc, dict):
            continue
        check(svc.get("image") == writ.get("image") and svc.get("build") == writ.get("build"),
              f"{where}: {name!r} must have the image and build of 'writ' ({writ.get('image')!r}, {writ.get('build')!r})")
        check(mounts.get(name, {}).get("/etc/writ/writ.toml") == CLUSTER_CONFIG.resolve(),
              f"{where}: {name!r} must mount ./{rel(CLUSTER_CONFIG)} at /etc/writ/writ.toml")
        deps = depends_on(svc)
        for target in (CLUSTER_INIT, "mongo-init"):
            check(deps.get(target) == "service_completed_successfully",
                  f"{where}: {name!r} must wait for {target!r} (depends_on condition: service_completed_successfully)")
        env = environment(svc)
        consumer = env.get("WRIT_CONSUMER_NAME")
        if check(bool(consumer), f"{where}: {name!r} sets no WRIT_CONSUMER_NAME"):
            check(consumer not in names, f"{where}: {name!r} and {names.get(consumer)!r} share WRIT_CONSUMER_NAME {consumer!r}")
            names.setdefault(consumer, name)
        if env.get("WRIT_REDIS_URL"):
            problem = cluster_seed_problem([u.strip() for u in env["WRIT_REDIS_URL"].split(",")])
            check(problem is None, f"{where}: {name!r}: WRIT_REDIS_URL {env['WRIT_REDIS_URL']!r}: {problem}")
        published = [host for _, host, container, _ in published_ports(svc) if container == metrics_port and host]
        if metrics_port and check(len(published) == 1,
                 f"{where}: {name!r} must publish its metrics port {metrics_port} (daemon.metrics_listen of "
                 f"{rel(CLUSTER_CONFIG)}) on one host port, publishes {svc.get('ports')!r}"):
            check(published[0] not in host_ports,
                  f"{where}: {name!r} and {host_ports.get(published[0])!r} publish metrics on the same host port {published[0]}")
            host_ports.setdefault(published[0], name)

    check(metrics_port is not None, f"{rel(CLUSTER_CONFIG)}: daemon.metrics_listen {listen!r} has no port")
    check_prometheus(mounts, PROMETHEUS_CLUSTER, CLUSTER_PROMETHEUS,
                     tuple(f"{d}:{metrics_port}" for d in CLUSTER_DAEMONS), exactly=True)


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

    services, mounts = check_compose()
    check_prometheus(mounts)
    dashboard_text = check_grafana(mounts)
    check_metric_names(dashboard_text)
    check_container_config()
    check_cluster_profile(services, mounts)
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
