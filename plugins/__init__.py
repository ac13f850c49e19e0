"""arvision's built-in components, registered through the ``arvision`` entry points like any plugin."""
