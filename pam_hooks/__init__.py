"""pam_hooks: the slotwarden login guard (PAM module client, guard service, policy, store).

Stdlib only (pyroute2 is imported lazily for the optional network block, psycopg only
when a shared store is configured); never imports the provisioner. The pieces:

- ``c/pam_slotwarden.c`` - the PAM module, a thin client of the service;
- ``service.py`` - the long-running guard service (one thread, exact counts);
- ``policy.py`` - LockoutPolicy, every decision; ``store.py`` - both stores' schemas (migrations);
- ``shared.py`` / ``pgstore.py`` - the fleet's shared store on PostgreSQL (``[guard] store``);
- ``install.py`` - adds/removes the PAM lines; ``client.py`` - operator requests;
- ``netblock.py`` - blackhole routes through netlink.
"""
