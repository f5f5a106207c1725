"""Built-in tasks (*what* is explained), registered through the ``register_tasks`` hook like any plugin's."""
