"""Models: loading any causal LM (the embedded GGUF, a directory, a hub id; ``loading``)
and identifying it by its files (``identity``)."""
