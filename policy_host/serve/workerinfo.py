"""What the control plane knows of the app's workers without importing the
app (Flask: a few tenths of a second of a command's start-up): how often
they look for changes, and where each says what it serves.
"""

# How often each worker looks at the snapshot and its change journal (two
# stat calls; seconds). Every way of running the app uses this one value,
# and `apply` waits for it before it publishes an id (RFC 8461 section 8:
# every worker must serve the new policy first).
WATCH_INTERVAL = 0.1

# Which snapshot the answering worker holds, for `apply` on the app's own
# (private) listener: one request reaches one worker, so `apply` asks until
# it has heard from every worker (``publish.workers``). Never for a policy
# name, nor through nginx (which answers 404 for it, nginx/*.conf).
SNAPSHOT_PATH = "/_policy-host/snapshot"
