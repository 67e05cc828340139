"""Dataset tooling: ``check`` (can this folder be trained on?), ``fixtures`` (tiny datasets in each
dataset's real on-disk format) and ``cli`` (``python -m alr_fast data ...``)."""
