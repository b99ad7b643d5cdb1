"""The edge: HTTP routes, the Bot Framework adapter and the Teams activity handler."""
