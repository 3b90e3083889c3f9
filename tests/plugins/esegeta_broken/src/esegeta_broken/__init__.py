"""A plugin whose backend is missing: importing it fails, as a broken install would."""

import esegeta_backend_that_does_not_exist  # noqa: F401
