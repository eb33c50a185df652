"""Accounts API routes."""

urlpatterns: list = []
