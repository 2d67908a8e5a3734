"""Knowledge distillation: forward-hook recorders, connectors, losses (one per file), and the
config-wired :class:`~engine.distill.distiller.Distiller`."""
