"""The generators of the embedded datasets (``ila-instruct``, ``ila-reasoning``,
``ila-preference``), run by ``scripts/generate_data.py``; the package ships their output
in ``src/ila/resources/``."""
