"""Durable state: the SQLite database, botbuilder Storage, conversation references, and later the outbox."""
