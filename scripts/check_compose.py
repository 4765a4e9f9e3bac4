"""Checks docker-compose.yml against the monitoring configs it runs with, offline (no Docker here):
every file or folder a service mounts from the repo exists, and every scrape target Prometheus is
given for compose (monitoring/prometheus/targets/*.json, and the names its DNS discovery asks for)
names a compose service and the port that service serves its metrics on (its environment's
*_METRICS_ADDR, or the exporter's own port).

    python3 scripts/check_compose.py [docker-compose.yml]

Exits 1 with one line per problem. Needs PyYAML (scripts/provision.sh installs it with
docker-compose in its own virtualenv).
"""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Where each job's target serves /metrics inside the compose network, by how the service says so.
EXPORTER_PORTS = {
    "postgres-exporter": 9187,  # prometheus-community/postgres-exporter's default
    "prometheus": 9090,
    "alertmanager": 9093,
}


def metrics_port(name, service):
    """The port a compose service serves /metrics on, as its definition says."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for key, value in env.items():
        if key.endswith("METRICS_ADDR"):
            return int(str(value).rsplit(":", 1)[1])
    opts = str(env.get("KAFKA_OPTS", ""))
    if "jmx_prometheus_javaagent" in opts:
        # -javaagent:JAR=PORT:CONFIG
        return int(opts.split("=", 1)[1].split(":")[0])
    return EXPORTER_PORTS.get(name)


def main():
    compose_path = ROOT / (sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml")
    compose = yaml.safe_load(compose_path.read_text())
    services = compose["services"]
    problems = []
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") or source.startswith("../"):
                if not (compose_path.parent / source).exists():
                    problems.append(f"service {name} mounts {source}, which is not in the repo")
    targets_dir = ROOT / "monitoring/prometheus/targets"
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())["scrape_configs"]
    jobs = {j["job_name"] for j in scrape}
    targets = {j["job_name"]: [] for j in scrape}
    for j in scrape:
        for dns in j.get("dns_sd_configs") or []:
            targets[j["job_name"]] += [f"{name}:{dns['port']}" for name in dns["names"]]
    for job in sorted(jobs):
        path = targets_dir / f"{job}.json"
        if not path.exists():
            problems.append(f"job {job} has no compose targets file {path.relative_to(ROOT)}")
            continue
        targets[job] += [t for group in json.loads(path.read_text()) for t in group["targets"]]
        if not targets[job]:
            problems.append(f"job {job} has no target under compose")
        for target in targets[job]:
            host, port = target.rsplit(":", 1)
            if host not in services:
                problems.append(f"job {job}: target {target} names no compose service")
                continue
            served = metrics_port(host, services[host])
            if served != int(port):
                problems.append(f"job {job}: target {target}, but service {host} serves metrics on {served}")
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print(f"{compose_path.name}: {len(services)} services, mounts present, {len(jobs)} scrape jobs agree with the services")


if __name__ == "__main__":
    main()
