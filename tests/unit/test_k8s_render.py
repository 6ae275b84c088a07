"""``drkit k8s render``: the shipped policies as Kubernetes objects, validated against the
Kubernetes 1.30 schemas (kubernetes-validate, strict: no unknown fields)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from drkit.cli.main import cli
from drkit.config import load_config
from drkit.errors import ConfigError
from drkit.scheduling.k8s import RenderOptions, dns_name, min_interval, policy_files, render, to_yaml
from drkit.scheduling.policy import load_policies

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schedules"
K8S = "1.30.0"
SECRET_VALUE = "s3cr3t-master-key-material"


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("DRKIT_MASTER_KEY", SECRET_VALUE)
    return load_config(EXAMPLES / "drkit.yaml")


def _objects(config, which: str, **opts) -> list[dict]:  # noqa: ANN001
    policies = load_policies(EXAMPLES / which, config)
    return render(policies, RenderOptions(image="registry.example/drkit:0.1.0", **opts),
                  (EXAMPLES / "drkit.yaml").read_text(), policy_files(policies))


@pytest.mark.parametrize("which", ["continuous", "seed"])
@pytest.mark.parametrize("scheduler", ["cronjobs", "daemon"])
def test_every_object_validates_strictly_against_the_kubernetes_schemas(config, which: str, scheduler: str) -> None:  # noqa: ANN001
    objects = _objects(config, which, scheduler=scheduler)
    for obj in yaml.safe_load_all(to_yaml(objects)):  # what kubectl would read
        kubernetes_validate.validate(obj, K8S, strict=True)
    assert SECRET_VALUE not in to_yaml(objects)


def test_a_cron_job_per_policy_job_running_schedule_due_for_its_sources(config) -> None:  # noqa: ANN001
    policies = {p.name: p for p in load_policies(EXAMPLES / "continuous", config)}
    objects = _objects(config, "continuous")
    jobs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "CronJob"}
    p = policies["platform"]
    assert set(jobs) == {"drkit-platform-full", "drkit-platform-incremental", "drkit-prune"}
    for job, cron in p.jobs().items():
        spec = jobs[f"drkit-platform-{job}"]["spec"]
        assert spec["schedule"] == cron and spec["timeZone"] == p.timezone
        assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
        assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0  # no storm of retried pods
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        [c] = pod["containers"]
        args = c["args"]
        i = args.index("due")
        assert args[i - 1] == "schedule" and args[i + 1: i + 1 + len(p.sources)] == p.sources
        wait = int(args[args.index("--wait") + 1])
        assert wait <= min_interval(p.incremental, p.timezone) / 2  # a stuck run exits before the next fire
        assert c["envFrom"] == [{"secretRef": {"name": "drkit-secrets"}}]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
        assert "--log-format" in args and args[args.index("--log-format") + 1] == "json"


def test_continuous_policies_get_a_followers_deployment_without_jobs(config) -> None:  # noqa: ANN001
    objects = _objects(config, "continuous")
    [dep] = [o for o in objects if o["kind"] == "Deployment"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"][-1] == "--no-jobs" and "run" in c["args"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert any(o["kind"] == "Service" for o in objects)
    # The seed policy is not continuous: CronJobs only.
    assert not [o for o in _objects(config, "seed") if o["kind"] == "Deployment"]


def test_daemon_mode_is_one_deployment_that_runs_the_jobs(config) -> None:  # noqa: ANN001
    objects = _objects(config, "seed", scheduler="daemon", prune_schedule=None)
    assert [o["kind"] for o in objects] == ["ConfigMap", "ConfigMap", "Deployment", "Service"]
    [c] = objects[2]["spec"]["template"]["spec"]["containers"]
    assert "--no-jobs" not in c["args"]


def test_config_maps_carry_the_configuration_and_policies_as_given(config) -> None:  # noqa: ANN001
    objects = _objects(config, "continuous")
    maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    assert maps["drkit-config"]["drkit.yaml"] == (EXAMPLES / "drkit.yaml").read_text()
    assert maps["drkit-schedules"] == {"platform.yaml": (EXAMPLES / "continuous" / "platform.yaml").read_text()}
    assert not [o for o in _objects(config, "continuous", config_maps=False) if o["kind"] == "ConfigMap"]


def test_names_are_dns_labels_within_the_cron_job_limit() -> None:
    assert dns_name("drkit", "Prod_EU.west", "full") == "drkit-prod-eu-west-full"
    long = dns_name("drkit", "x" * 80, "incremental")
    assert len(long) <= 52 and long != dns_name("drkit", "x" * 79, "incremental")


def test_bad_options_are_refused(config) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="not a cron expression"):
        _objects(config, "seed", prune_schedule="every night")
    with pytest.raises(ConfigError, match="cronjobs or daemon"):
        _objects(config, "seed", scheduler="systemd")


def test_the_cli_writes_a_stream_or_one_file_per_object(config, tmp_path: Path) -> None:  # noqa: ANN001
    runner = CliRunner()
    args = ["--config", str(EXAMPLES / "drkit.yaml"), "k8s", "render", "--image", "r/drkit:1",
            "--schedules", str(EXAMPLES / "continuous")]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    kinds = [d["kind"] for d in yaml.safe_load_all(res.stdout)]
    assert kinds.count("CronJob") == 3
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert len(files) == len(kinds) and files[0].startswith("00-configmap-")
    json.dumps([yaml.safe_load(p.read_text()) for p in (tmp_path / "m").iterdir()])


def test_schedule_run_without_jobs_supervises_only(config, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from drkit.scheduling.daemon import Daemon

    calls: list[object] = []
    policies = load_policies(EXAMPLES / "continuous", config)
    daemon = Daemon(config, policies, config_path=None, listen=None, followers=False, jobs=False)
    monkeypatch.setattr(daemon, "run_due", lambda *a, **k: calls.append(a))
    daemon.run(duration=1.0)
    assert calls == []  # no catch-up run, no cron trigger
    daemon = Daemon(config, policies, config_path=None, listen=None, followers=False)
    monkeypatch.setattr(daemon, "run_due", lambda *a, **k: calls.append(a))
    daemon.run(duration=1.0)
    assert len(calls) == 1  # with jobs: the catch-up run at start


def test_cron_jobs_push_their_metrics_when_given_a_gateway(config) -> None:  # noqa: ANN001
    objects = _objects(config, "continuous", push_gateway="http://pushgateway.monitoring:9091")
    for o in objects:
        if o["kind"] == "CronJob" and o["metadata"]["name"] != "drkit-prune":
            args = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[-2:] == ["--push", "http://pushgateway.monitoring:9091"]
        kubernetes_validate.validate(o, K8S, strict=True)
