"""The compiled pipelines: wiring of components, cluster settings, compile entry points."""
