"""WSGI entry point (gunicorn hotswap.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from hotswap.lib.memory import return_large_buffers_to_os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotswap.settings.base")
return_large_buffers_to_os()
application = get_wsgi_application()
