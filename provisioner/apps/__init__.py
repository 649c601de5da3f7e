"""Apps in a slot: one-click installs of real daemons, each with its own generated credentials.

An app is a module here defining ``APP``, an instance of an :class:`App` subclass: adding an
app touches nothing else. The framework is :mod:`provisioner.apps.framework`; the slot hooks
(``slot create --app``, removal, reserved names, the app control) :mod:`provisioner.apps.extension`.
This package's face re-exports the framework's reading side (changes of a slot's apps go through
the front door, :mod:`provisioner.operations`: ``install_app``, ``uninstall_app``, ``rotate_app``,
each under the slot's lock):

    catalog()                               every app, one module per app in this package
    app_credentials(ctx, username, app)     reveal (audited)
    app_status(ctx, username)               each app: running?, pid, port, since
"""

from __future__ import annotations

from provisioner.apps.framework import (
    APPS_DIR,
    CREDENTIALS_FILE,
    App,
    AppCredentials,
    AppSettings,
    Installation,
    app_credentials,
    app_status,
    catalog,
    frontdoor_url,
    get_app,
    plan_install,
    plan_uninstall,
    registry_of,
    settings_of,
    stop_leftovers,
    wait_closed,
    wait_listening,
)

__all__ = [
    "APPS_DIR",
    "CREDENTIALS_FILE",
    "App",
    "AppCredentials",
    "AppSettings",
    "Installation",
    "app_credentials",
    "app_status",
    "catalog",
    "frontdoor_url",
    "get_app",
    "plan_install",
    "plan_uninstall",
    "registry_of",
    "settings_of",
    "stop_leftovers",
    "wait_closed",
    "wait_listening",
]
