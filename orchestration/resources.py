"""The platform resource: settings, database and partner configs, resolved at run time."""

from __future__ import annotations

import os
from functools import cached_property

import dagster as dg

from ingestion.partners.config import PartnerConfigs, load_partner_configs
from mdp.database import ConnectionParams, connection_params
from mdp.settings import Settings, load_settings


class PlatformResource(dg.ConfigurableResource):
    """Everything comes from the environment (MDP_*), read when a run starts, not at import."""

    @cached_property
    def settings(self) -> Settings:
        return load_settings()

    @cached_property
    def params(self) -> ConnectionParams:
        params = connection_params(self.settings)
        # dbt (a subprocess) reads its profile from these; dlt gets them passed explicitly.
        os.environ.update(params.dbt_env())
        return params

    def partner_configs(self) -> PartnerConfigs:
        return load_partner_configs(self.settings.partner_config_dir)
