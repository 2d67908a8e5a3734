"""The slide viewer: the view widget, its tile loader, the overview and the sample-slide download."""

from app.pyside_refcount import protect_singletons

protect_singletons()  # idempotent; also here in case ``app`` was imported oddly (see pyside_refcount)
