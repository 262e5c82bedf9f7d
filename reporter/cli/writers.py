"""The shell writers: one command per outbox kind, each a validated INSERT (`notify` and the
rest), for tools that are shell scripts."""

from __future__ import annotations

import click

from reporter.cli.base import existing_outbox, guarded
from reporter.config import Config
from reporter.outbox import Outbox
from reporter.rows import APPLICATION_STATUSES, ATTRIBUTE_TYPES, MAX_STATUS_DETAIL, STATUSES

__all__ = ["WRITERS"]

STREAM_HELP = "Progress update stream (default from config)."


def _writer(cfg: Config) -> Outbox:
    return Outbox(cfg.outbox.url or cfg.outbox.path, cfg.outbox.busy_timeout_ms)


@click.command()
@click.argument("task")
@click.option("--status", required=True, type=click.Choice(STATUSES), help="Task status.")
@click.option("--percent", type=int, help="Progress, 0..100.")
@click.option("--detail", help=f"Status detail: line breaks become spaces and text past "
              f"{MAX_STATUS_DETAIL:,} characters is cut (the Hub's limit).")
@click.option(
    "--next-update-seconds", type=int, help="When the next update comes (default from config)."
)
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def notify(
    ctx: click.Context,
    task: str,
    status: str,
    percent: int | None,
    detail: str | None,
    next_update_seconds: int | None,
    stream: str | None,
) -> None:
    """Queue a task_state row (becomes NotifyMigrationTaskState)."""
    row = _writer(existing_outbox(ctx)).task_state(
        task,
        status,
        percent=percent,
        detail=detail,
        next_update_seconds=next_update_seconds,
        stream=stream,
    )
    click.echo(f"queued row {row}")


def _attribute(text: str) -> tuple[str, str]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in ATTRIBUTE_TYPES:
        raise click.BadParameter(
            f"{text!r}: expected TYPE=VALUE with TYPE one of {', '.join(ATTRIBUTE_TYPES)}",
            param_hint="--attribute",
        )
    return kind, value


@click.command("put-attributes")
@click.argument("task")
@click.option(
    "--attribute",
    "attributes",
    multiple=True,
    required=True,
    metavar="TYPE=VALUE",
    help="Repeatable; the full list (it replaces what the Hub has).",
)
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def put_attributes(
    ctx: click.Context, task: str, attributes: tuple[str, ...], stream: str | None
) -> None:
    """Queue a resource_attributes row (becomes PutResourceAttributes)."""
    pairs = [_attribute(a) for a in attributes]
    row = _writer(existing_outbox(ctx)).resource_attributes(task, pairs, stream=stream)
    click.echo(f"queued row {row}")


@click.command("associate-artifact")
@click.argument("task")
@click.argument("arn")
@click.option("--description", help="Up to 500 characters, one line.")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def associate_artifact(
    ctx: click.Context, task: str, arn: str, description: str | None, stream: str | None
) -> None:
    """Queue a created_artifact row (becomes AssociateCreatedArtifact)."""
    row = _writer(existing_outbox(ctx)).created_artifact(
        task, arn, description=description, stream=stream
    )
    click.echo(f"queued row {row}")


@click.command("disassociate-artifact")
@click.argument("task")
@click.argument("arn")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def disassociate_artifact(ctx: click.Context, task: str, arn: str, stream: str | None) -> None:
    """Queue a created_artifact_removed row (becomes DisassociateCreatedArtifact)."""
    row = _writer(existing_outbox(ctx)).created_artifact_removed(task, arn, stream=stream)
    click.echo(f"queued row {row}")


@click.command("associate-resource")
@click.argument("task")
@click.argument("configuration_id")
@click.option("--description", help="Up to 500 characters, one line.")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def associate_resource(
    ctx: click.Context, task: str, configuration_id: str, description: str | None,
    stream: str | None,
) -> None:
    """Queue a discovered_resource row: map TASK to a discovered server by hand (becomes
    AssociateDiscoveredResource)."""
    row = _writer(existing_outbox(ctx)).discovered_resource(
        task, configuration_id, description=description, stream=stream
    )
    click.echo(f"queued row {row}")


@click.command("disassociate-resource")
@click.argument("task")
@click.argument("configuration_id")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def disassociate_resource(
    ctx: click.Context, task: str, configuration_id: str, stream: str | None
) -> None:
    """Queue a discovered_resource_removed row (becomes DisassociateDiscoveredResource)."""
    row = _writer(existing_outbox(ctx)).discovered_resource_removed(
        task, configuration_id, stream=stream
    )
    click.echo(f"queued row {row}")


@click.command("associate-source")
@click.argument("task")
@click.argument("name")
@click.option("--description", help="Up to 500 characters, one line.")
@click.option("--detail", help=f"Status detail: line breaks become spaces and text past "
              f"{MAX_STATUS_DETAIL:,} characters is cut (the Hub's limit).")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def associate_source(
    ctx: click.Context, task: str, name: str, description: str | None, detail: str | None,
    stream: str | None,
) -> None:
    """Queue a source_resource row: the server, application or wave TASK belongs to (becomes
    AssociateSourceResource)."""
    row = _writer(existing_outbox(ctx)).source_resource(
        task, name, description=description, detail=detail, stream=stream)
    click.echo(f"queued row {row}")


@click.command("disassociate-source")
@click.argument("task")
@click.argument("name")
@click.option("--stream", help=STREAM_HELP)
@click.pass_context
@guarded
def disassociate_source(ctx: click.Context, task: str, name: str, stream: str | None) -> None:
    """Queue a source_resource_removed row (becomes DisassociateSourceResource)."""
    row = _writer(existing_outbox(ctx)).source_resource_removed(task, name, stream=stream)
    click.echo(f"queued row {row}")


@click.command("application-state")
@click.argument("application_id")
@click.argument("status", type=click.Choice(APPLICATION_STATUSES))
@click.pass_context
@guarded
def application_state(ctx: click.Context, application_id: str, status: str) -> None:
    """Queue an application_state row: the migration status of an Application Discovery
    Service application (becomes NotifyApplicationState)."""
    row = _writer(existing_outbox(ctx)).application_state(application_id, status)
    click.echo(f"queued row {row}")


WRITERS = (notify, put_attributes, associate_artifact, disassociate_artifact, associate_resource,
           disassociate_resource, associate_source, disassociate_source, application_state)
