"""Runtimes: how an agent makes its GPUs run what the platform assigned (docs/workloads.md).

``base`` holds the interface and the workload states; ``simulated`` is the fleet's and
``--runtime simulated``'s deterministic runtime; ``docker`` drives the Docker Engine API
on a real node.
"""
