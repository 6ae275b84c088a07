"""``drkit k8s render``: the policies in ``schedules/`` as Kubernetes objects.

- A **CronJob per policy job** (``full``, ``incremental``) on the job's cron expression and the
  policy's time zone, running ``drkit schedule due <the policy's sources>``.  ``due`` reads what
  ran from the repository, so whichever CronJob fires runs exactly what is due (a job missed while
  the cluster was down runs once, and two CronJobs firing together share the work through the
  job lease).  ``concurrencyPolicy: Forbid``, ``startingDeadlineSeconds`` (a start missed by more
  is left to the next fire, which catches up), ``backoffLimit: 0`` (a failed run is not retried
  in a loop of pods: the next fire retries, and the alert rules report the failure), and ``--wait``
  bounded below the shortest cron interval, so a run stuck behind a lease exits 6 instead of
  piling up.
  With ``--push-gateway URL`` each run pushes its metrics to a Pushgateway (a CronJob's pod is
  gone before Prometheus could scrape it).
- A **prune CronJob** (``--prune-schedule``; the recommended shape: prune apart from the backups).
- A **Deployment** for ``drkit schedule run``: with ``--scheduler cronjobs`` (the default) only
  when a policy is ``continuous`` -- it supervises the followers (``--no-jobs``) and serves
  ``/metrics`` and ``/health``; with ``--scheduler daemon`` it runs the jobs too and no CronJob is
  rendered.  One replica, ``Recreate``: two would fight over the followers' leases.  A Service
  exposes ``/metrics``.
- **ConfigMaps** with the configuration file and the policies (``--no-config-maps`` leaves them
  to you).  Secrets are never rendered: every pod takes its environment (the repository key,
  S3/KMS credentials, datastore passwords -- whatever the configuration's ``*_env`` settings name)
  from the Secret ``--secret`` names.

Every pod runs as the image's non-root user (uid 10001) with a read-only root filesystem, no
privilege escalation, no capabilities, the runtime's seccomp profile, resource requests and
limits, and JSON logs.  ``/var/lib/drkit`` (restores, drills, the receiver's spool) and ``/tmp``
are ``emptyDir`` volumes; size them (or replace them with a PVC) for the restores you run there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from croniter import croniter

from drkit.errors import ConfigError

from .policy import Policy

CONFIG_DIR = "/etc/drkit"
SCHEDULES_DIR = "/etc/drkit/schedules"
METRICS_PORT = 9464
UID = 10001
_NAME_RE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class RenderOptions:
    image: str
    namespace: str = "drkit"
    secret: str = "drkit-secrets"
    config_map: str = "drkit-config"
    schedules_map: str = "drkit-schedules"
    scheduler: str = "cronjobs"  # or "daemon"
    prune_schedule: str | None = "30 3 * * *"
    cpu: str = "500m"
    memory: str = "1Gi"
    memory_limit: str = "2Gi"
    starting_deadline: int = 300
    config_maps: bool = True
    push_gateway: str | None = None  # CronJobs push their metrics here after each run


def dns_name(*parts: str, limit: int = 52) -> str:
    """A DNS-1123 label from ``parts`` (CronJob names may have 52 characters)."""
    name = _NAME_RE.sub("-", "-".join(parts).lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > limit:
        import hashlib

        digest = hashlib.sha256(name.encode()).hexdigest()[:6]
        name = name[: limit - 7].rstrip("-") + "-" + digest
    return name or "drkit"


def min_interval(cron: str, tz: str) -> float:
    """The shortest gap between two fires of ``cron`` over a week (seconds)."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    it = croniter(cron, datetime(2026, 1, 5, tzinfo=UTC).astimezone(ZoneInfo(tz)))
    fires = [it.get_next(datetime) for _ in range(200)]
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False) if b > a]
    return min(gaps) if gaps else 86400.0


def render(policies: list[Policy], opts: RenderOptions, config_text: str | None = None,
           policy_files: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects for ``policies`` (dicts, in apply order)."""
    if opts.scheduler not in ("cronjobs", "daemon"):
        raise ConfigError(f"--scheduler {opts.scheduler!r}: cronjobs or daemon")
    if not policies:
        raise ConfigError("no policies to render (schedules/*.yaml)")
    objects: list[dict[str, Any]] = []
    labels = {"app.kubernetes.io/name": "drkit", "app.kubernetes.io/managed-by": "drkit-k8s-render"}
    if opts.config_maps:
        if config_text is not None:
            objects.append(_config_map(opts.config_map, opts.namespace, {"drkit.yaml": config_text}, labels))
        objects.append(_config_map(opts.schedules_map, opts.namespace, dict(policy_files or {}), labels))
    if opts.scheduler == "cronjobs":
        for p in policies:
            shortest = min(min_interval(c, p.timezone) for c in p.jobs().values())
            wait = int(max(30, min(600, shortest / 2)))
            for job, cron in p.jobs().items():
                args = ["schedule", "due", *p.sources, "--schedules", SCHEDULES_DIR, "--wait", str(wait)]
                if opts.push_gateway:
                    args += ["--push", opts.push_gateway]
                objects.append(_cron_job(dns_name("drkit", p.name, job), cron, p.timezone, args,
                                         {**labels, "drkit.io/policy": dns_name(p.name, limit=63),
                                          "drkit.io/job": job}, opts))
    if opts.prune_schedule:
        if not croniter.is_valid(opts.prune_schedule):
            raise ConfigError(f"--prune-schedule {opts.prune_schedule!r} is not a cron expression")
        objects.append(_cron_job("drkit-prune", opts.prune_schedule, "UTC", ["prune"],
                                 {**labels, "drkit.io/job": "prune"}, opts))
    continuous = any(p.continuous for p in policies)
    if opts.scheduler == "daemon" or continuous:
        args = ["schedule", "run", "--schedules", SCHEDULES_DIR, "--listen", f"0.0.0.0:{METRICS_PORT}"]
        if opts.scheduler == "cronjobs":
            args.append("--no-jobs")
        objects.append(_deployment(args, {**labels, "app.kubernetes.io/component": "scheduler"}, opts))
        objects.append(_service({**labels, "app.kubernetes.io/component": "scheduler"}, opts))
    return objects


def _config_map(name: str, namespace: str, data: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
                                                                   "labels": labels}, "data": data}


def _pod(args: list[str], opts: RenderOptions, *, restart: str, probes: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "drkit",
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config", f"{CONFIG_DIR}/drkit.yaml", "--log-format", "json", *args],
        "envFrom": [{"secretRef": {"name": opts.secret}}],
        "env": [{"name": "DRKIT_STATE_DIR", "value": "/var/lib/drkit"}],
        "resources": {"requests": {"cpu": opts.cpu, "memory": opts.memory},
                      "limits": {"memory": opts.memory_limit}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "config", "mountPath": f"{CONFIG_DIR}/drkit.yaml", "subPath": "drkit.yaml", "readOnly": True},
            {"name": "schedules", "mountPath": SCHEDULES_DIR, "readOnly": True},
            {"name": "state", "mountPath": "/var/lib/drkit"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if probes:
        container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
        probe = {"httpGet": {"path": "/health", "port": "metrics"}, "periodSeconds": 30, "timeoutSeconds": 5}
        container["livenessProbe"] = {**probe, "failureThreshold": 4, "initialDelaySeconds": 30}
        container["readinessProbe"] = {**probe, "failureThreshold": 2}
    return {
        "restartPolicy": restart,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 330,  # schedule run's --stop-timeout (300 s) and a margin
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": opts.config_map}},
            {"name": "schedules", "configMap": {"name": opts.schedules_map}},
            {"name": "state", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def _cron_job(name: str, cron: str, tz: str, args: list[str], labels: dict[str, str],
              opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": labels},
        "spec": {
            "schedule": cron,
            "timeZone": tz,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": opts.starting_deadline,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 0,
                    "ttlSecondsAfterFinished": 7 * 86400,
                    "template": {"metadata": {"labels": labels}, "spec": _pod(args, opts, restart="Never")},
                },
            },
        },
    }


def _deployment(args: list[str], labels: dict[str, str], opts: RenderOptions) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": "drkit", "app.kubernetes.io/component": "scheduler"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "drkit-scheduler", "namespace": opts.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                                                               "prometheus.io/port": str(METRICS_PORT)}},
                "spec": _pod(args, opts, restart="Always", probes=True),
            },
        },
    }


def _service(labels: dict[str, str], opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "drkit-metrics", "namespace": opts.namespace, "labels": labels},
        "spec": {"selector": {"app.kubernetes.io/name": "drkit", "app.kubernetes.io/component": "scheduler"},
                 "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
    }


def policy_files(policies: list[Policy]) -> dict[str, str]:
    """The policies' files by name (ConfigMap keys: the file names, flat)."""
    out = {}
    for p in policies:
        if p.path is not None:
            out[Path(p.path).name] = Path(p.path).read_text()
    return out


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One YAML stream, without anchors, multi-line strings (the files) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        if "\n" in data:
            body = "\n".join(line.rstrip() for line in data.splitlines()) + ("\n" if data.endswith("\n") else "")
            return dumper.represent_scalar("tag:yaml.org,2002:str", body, style="|")
        return dumper.represent_scalar("tag:yaml.org,2002:str", data)

    Dumper.add_representer(str, text)
    return yaml.dump_all(objects, Dumper=Dumper, sort_keys=False)
