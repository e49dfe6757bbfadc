"""Hashgrid reference node agent and fleet simulator.

This package runs on partners' GPU nodes, far from the platform, so it imports nothing
from Django or from the rest of the project: the platform may import *it* (for
``protocol.verify_signature`` and friends), never the other way round.
"""

AGENT_VERSION = "1.0.0"
