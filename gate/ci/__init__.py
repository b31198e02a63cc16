"""The CI layer: suites of models, shards and their merge, stages, comparisons
against a base report, runner noise, and the GitHub Action's glue."""
