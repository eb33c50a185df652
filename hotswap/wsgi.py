"""WSGI entry point (gunicorn hotswap.wsgi): device check-ins take the short road of hotswap/handlers.py."""

import os

from django.core.wsgi import get_wsgi_application

from hotswap.lib.memory import return_large_buffers_to_os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotswap.settings.base")
return_large_buffers_to_os()
_full_stack = get_wsgi_application()  # sets Django up first

from hotswap.handlers import HotSwapApplication  # noqa: E402 - imports Django's URL machinery

application = HotSwapApplication(_full_stack)
