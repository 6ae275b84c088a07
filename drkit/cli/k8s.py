"""``drkit k8s render``: the schedule policies as Kubernetes CronJobs, a Deployment and ConfigMaps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from drkit.cli.main import AppContext


@click.group(name="k8s")
def k8s_group() -> None:
    """Kubernetes manifests for running drkit's schedules in a cluster."""


@k8s_group.command()
@click.option("--schedules", "schedules", type=click.Path(path_type=Path, file_okay=False),
              help="The policies' directory (default: schedules/ next to the configuration file).")
@click.option("--image", required=True, help="The drkit image (built from the Dockerfile), e.g. registry/drkit:0.1.0.")
@click.option("--namespace", default="drkit", show_default=True)
@click.option("--secret", default="drkit-secrets", show_default=True,
              help="The Secret every pod takes its environment from (keys, credentials, passwords).")
@click.option("--scheduler", type=click.Choice(["cronjobs", "daemon"]), default="cronjobs", show_default=True,
              help="cronjobs: a CronJob per policy job (+ a followers Deployment for continuous policies); "
                   "daemon: one Deployment running 'schedule run'.")
@click.option("--prune-schedule", default="30 3 * * *", show_default=True,
              help="Cron expression (UTC) of the prune CronJob ('' for none).")
@click.option("--cpu", default="500m", show_default=True, help="CPU request of each pod.")
@click.option("--memory", default="1Gi", show_default=True, help="Memory request of each pod.")
@click.option("--memory-limit", default="2Gi", show_default=True, help="Memory limit of each pod.")
@click.option("--no-config-maps", is_flag=True, help="Leave out the ConfigMaps of the configuration and policies.")
@click.option("--push-gateway", metavar="URL", help="The CronJobs push their metrics to this Pushgateway after "
              "each run (schedule due --push).")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False),
              help="Write one file per object into this directory (default: one YAML stream on stdout).")
@click.pass_obj
def render(app: AppContext, schedules: Path | None, image: str, namespace: str, secret: str, scheduler: str,
           prune_schedule: str, cpu: str, memory: str, memory_limit: str, no_config_maps: bool,
           push_gateway: str | None, out: Path | None) -> None:
    """Render the policies in schedules/ as Kubernetes objects (kubectl apply -f). No Secret is
    rendered: create it yourself with the variables the configuration's *_env settings name."""
    from drkit.scheduling.k8s import RenderOptions, policy_files, to_yaml
    from drkit.scheduling.k8s import render as run
    from drkit.scheduling.policy import load_policies, schedules_dir

    config = app.config
    policies = load_policies(schedules_dir(config, schedules), config)
    opts = RenderOptions(image=image, namespace=namespace, secret=secret, scheduler=scheduler,
                         prune_schedule=prune_schedule or None, cpu=cpu, memory=memory, memory_limit=memory_limit,
                         config_maps=not no_config_maps, push_gateway=push_gateway)
    text = Path(config.path).read_text() if config.path else None
    objects = run(policies, opts, text, policy_files(policies))
    if out is None:
        click.echo(to_yaml(objects), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects):
        path = out / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(to_yaml([obj]))
    click.echo(f"wrote {len(objects)} objects to {out}", err=True)
