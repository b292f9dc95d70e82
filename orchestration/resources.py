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


class FitbitResource(dg.ConfigurableResource):
    """Fitbit Web API app credentials; the base URL points at the sandbox emulator locally."""

    base_url: str | None = None  # None: FITBIT_API_BASE_URL, else the real API

    def app(self):
        from ingestion.devices.fitbit.client import DEFAULT_BASE_URL, FitbitApp
        from mdp.settings import secret

        base_url = self.base_url or os.environ.get("FITBIT_API_BASE_URL") or DEFAULT_BASE_URL
        return FitbitApp(
            base_url=base_url.rstrip("/"),
            client_id=os.environ.get("FITBIT_CLIENT_ID", "mdp-sandbox-client"),
            client_secret=secret("FITBIT_CLIENT_SECRET"),
        )
