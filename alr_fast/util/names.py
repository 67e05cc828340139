"""The names the command line offers as choices (methods, recipes), in a module that imports nothing, so that
``python -m alr_fast --help`` answers without importing torch (alr_fast/cli.py).

``alr_fast.config`` re-exports :data:`METHODS` and :data:`DEMO_METHODS`; :data:`RECIPE_NAMES` lists the keys of
``alr_fast.recipes.RECIPES`` (tests/test_cli_output.py checks that the two agree).
"""

METHODS = ("ce", "selc", "alr", "elr", "gce", "sce", "bootstrap")
DEMO_METHODS = ("ce", "selc", "alr")
"""What the demo compares by default (`python -m alr_fast demo --methods` takes any of METHODS)."""

RECIPE_NAMES = ("demo", "cifar10", "cifar100", "animal10n", "clothing1m", "mini-webvision", "webvision", "own-data")
