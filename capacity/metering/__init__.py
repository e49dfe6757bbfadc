"""Metering: poll every node agent, verify what it says, store each usage record once.

Layout (modules named after what they do); HTTP to agents goes through capacity's one
agent adapter, ``capacity.agent_client`` (``AgentHttp``, explicit timeouts):

- ``validation``: pure checks of one usage record against the node's inventory.
- ``polling``: async fetch of a node's pages and health; signature, chain, validation.
- ``ingest``: one database statement per page: records, cursor, rollups, availability.
- ``sweep``: which nodes are due, claimed without two workers taking the same node.
- ``health``: node status (online, degraded, unreachable), backoff, partner emails.
- ``availability``: per GPU per minute availability bitmaps and 30-day figures.
- ``attribution``: the seam where usage records meet contracts (allocations, API keys).
"""
