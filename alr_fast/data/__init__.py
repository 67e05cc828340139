"""Datasets, by concern (each layer imports only the ones above it in this list):

* :mod:`alr_fast.data.readers` - one module per dataset (CIFAR/CIFAR-N, Animal-10N, Clothing1M, WebVision,
  the embedded arrays) plus the pieces they share (``records.SampleTable``, list files, noise files, safe
  pickles); ``read_split(name, root, split)`` picks the reader.
* :mod:`alr_fast.data.loaders` - batches of (images, global index) for one rank: the epoch plan (which rows,
  in which order), the DALI and torchvision loaders over a table, the in-memory ``ArrayLoader``, transforms;
  ``build_loader`` picks the backend.
* :mod:`alr_fast.data.train_data` - the dataset as the training loop sees it (``TrainData``,
  ``build_train_data``).
* :mod:`alr_fast.data.indexed` - for a user's own loop: ``WithIndex`` (a dataset that also yields the global
  index) and ``OwnerSampler`` / ``OwnerBatchSampler`` (each rank its own samples, by the owner rule).
* :mod:`alr_fast.data.tools` - ``python -m alr_fast data {check, make-fixture}``.

Import from the module that defines a name; this package re-exports nothing.
"""
