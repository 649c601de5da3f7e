"""The provisioning API: an HTTP JSON front door for the operator's billing system.

``slotctl api serve`` runs :func:`provisioner.api.app.create_app` under uvicorn. Operations mirror
the billing functions (create, suspend, unsuspend, terminate, change password, change plan, usage)
and call the same provisioner functions as the CLI. Bearer tokens (:mod:`.tokens`) are stored
hashed; every request is audited; ``Idempotency-Key`` (:mod:`.idempotency`) makes retried
webhooks safe; changes of one slot are serialized by the slot lock.

The token and idempotency modules import nothing heavy, so ``slotctl api token ...`` does not
load the web framework.
"""
