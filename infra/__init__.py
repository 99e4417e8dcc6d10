"""The platform shared by the web layer (service/) and the workers (worker/).

Settings, persistence, the queue, artifact storage, dispatch of audit work, upload sweeping
and the sandbox that runs untrusted model code. Nothing here imports Flask, so a worker can
use it without pulling in the web layer, and nothing imports torch, so the API image stays
small.
"""
