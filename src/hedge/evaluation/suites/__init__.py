"""The built-in evaluation suites, written for hedge (data only: see hedge.evaluation.suite)."""
