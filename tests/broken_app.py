"""An app module that fails to import: workers cannot boot."""

raise RuntimeError("this app is broken on purpose")
