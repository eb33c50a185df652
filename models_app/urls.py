"""Model registry API routes."""

urlpatterns: list = []
