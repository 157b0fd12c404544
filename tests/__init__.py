"""The test suite: a package of its own, so that `tests.*` resolves here even where an
installed distribution ships a top-level `tests` package of its own (tf2onnx 1.17 and xdsl
0.28 both do)."""
