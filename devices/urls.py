"""Registry, enrollment and credential routes (people and CI)."""

urlpatterns: list = []
