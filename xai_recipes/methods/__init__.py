"""The built-in explanation methods, one plugin module per family of methods.

Each module registers its methods through the ``register_methods`` hook and is announced in the
``xai_recipes`` entry-point group, exactly like a third-party method plugin. Heavy libraries
(grad-cam, scikit-learn) are imported when a method runs, so listing plugins stays instant.
"""
