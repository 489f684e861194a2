"""The node library. Importing this package registers every node type in `schema.NODE_TYPES`."""

from graph_executor.nodes import output, noises, patterns, filters  # noqa: F401
