"""Device-facing routes: check-in and the manifest public key; desired-state routes."""

urlpatterns: list = []
