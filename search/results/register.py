"""`ticket-search best --register NAME`: the best ticket as a version of a registered model, with an alias.

The ticket's MLflow 3 LoggedModel (search/tracking/native.py; created with its ticket run) becomes version N of
the registered model NAME, and the alias (default `best`) moves to it, so `models:/NAME@best` always names the
best ticket registered last. A ticket run written before tickets were logged models has none: a user mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from search.results.query import TicketRecord, client_for
from trainables.typed import ConfigError

ALIAS = "best"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str
    model_id: str


def register_best(tracking_uri: str | None, record: TicketRecord, name: str, alias: str = ALIAS) -> Registered:
    """Register `record`'s logged model as a new version of `name` and point `alias` at it."""
    client = client_for(tracking_uri)
    run = client.get_run(record.run_id)
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{record.run_id}'")
    if not models:
        raise ConfigError(f"--register: ticket run {record.run_id} has no logged model (it was written before "
                          "tickets were logged models)")
    model = models[0]
    try:
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        version = client.create_model_version(name, source=f"models:/{model.model_id}", run_id=record.run_id,
                                              model_id=model.model_id)
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise ConfigError(f"--register: {name!r} is not a valid model name: {e.message}") from None
        raise
    return Registered(name, str(version.version), alias, str(model.model_id))
