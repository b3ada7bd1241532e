"""Persistence: ORM models, writing turns, batch writer with outbox, reports."""
