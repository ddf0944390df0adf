"""The evaluation harness: a pipeline of small stages (data, models, defences, attacks, metrics, report)
joined by one documented results schema. Uses only the public API of :mod:`art_smoothing_plugin`."""
