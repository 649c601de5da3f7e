"""The fleet: hosts registered on a controller, their facts, and slots placed by room.

- :mod:`.placement` — the rule that picks a host (pure, readable: ``placement.RULE``);
- :mod:`.facts` — a host's facts (``GET /v1/host``) and their checks;
- :mod:`.inventory` — the controller's tables (the only SQL for them);
- :mod:`.client` — the controller's HTTPS client of a host's provisioning API;
- :mod:`.controller` — the front door the CLI and the API's fleet mode call.
"""

from provisioner.fleet.placement import RULE, HostRoom, Placement, place

__all__ = ["RULE", "HostRoom", "Placement", "place"]
