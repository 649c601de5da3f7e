"""The ``[hub]`` section: where the Hub listens, its TLS files, its user, its PAM service, timeouts.

The section is modelled with the rest of the file in :mod:`provisioner.config`.

>>> from provisioner.config import load_config_text
>>> cfg = hub_config(load_config_text('state_dir = "/var/lib/sw"\\n[hub]\\nidle_timeout = "10m"\\n'))
>>> cfg.idle_timeout, str(cfg.cert)
(600, '/var/lib/sw/hub/hub.crt')
"""

from __future__ import annotations

from provisioner.config import Config, HubConfig

__all__ = ["HubConfig", "hub_config"]


def hub_config(config: Config) -> HubConfig:
    """The ``[hub]`` section of CONFIG (its TLS files in the state dir unless named)."""
    return config.hub
