"""The Hub: the tenant's web portal (unprivileged HTTP) over a privileged bridge (acts for one slot).

- :mod:`provisioner.hub.web` — pages (Starlette, Jinja2), run as the Hub's system user;
- :mod:`provisioner.hub.bridge` — the root-owned Unix socket the pages call (SO_PEERCRED);
- :mod:`provisioner.hub.sessions` — server-held sessions and login events;
- :mod:`provisioner.hub.auth` — the PAM check (service ``slotwarden-hub``, the guard in its stack);
- :mod:`provisioner.hub.server` — ``slotctl hub serve``; :mod:`provisioner.hub.hostinit` — its user and TLS.
"""

from provisioner.hub.config import HubConfig, hub_config

__all__ = ["HubConfig", "hub_config"]
