"""The edge stage: TFLite variants under the LiteRT interpreter, beside in-process baselines."""
