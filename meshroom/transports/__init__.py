"""Transports: thin adapters that turn client connections into :class:`meshroom.core.Connection`."""
