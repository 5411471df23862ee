"""genret: generative retrieval with semantic IDs."""

__version__ = "0.1.0"

__all__ = ["Retriever", "__version__"]


def __getattr__(name):
    # Lazy so that `import genret` (and the CLI's --help) does not pay for torch and Lightning.
    if name == "Retriever":
        from genret.decoding.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'genret' has no attribute {name!r}")
