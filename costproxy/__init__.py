# structlog before anything else of costproxy imports it: without the optional packages it would
# import and the server never uses (costproxy.lean_imports).
from costproxy.lean_imports import import_structlog

import_structlog()
