"""Settings shared by every tier.

Hypothesis: no deadline. Its default fails an example that takes longer than 200 ms, which is a
timing assertion by another name — on this 2-core machine, shared with the VM lab in CI, a parser
can take that long without being wrong (the project's rule: never assert a timing in a test).
"""

from hypothesis import settings

settings.register_profile("slotwarden", deadline=None)
settings.load_profile("slotwarden")
