"""The built-in recipes of xai-recipes, one module per model family.

Installed as the package ``xai_recipes_builtin`` and registered through the ``xai_recipes``
entry-point group, exactly like a third-party plugin. Each module uses only the public API of
``xai_recipes`` (``hookimpl``, ``Recipe`` and its helpers).
"""
