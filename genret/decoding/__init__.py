"""Decoding: constrained beam search and the Retriever API."""

from genret.decoding.retriever import RetrievalResult, Retriever

__all__ = ["Retriever", "RetrievalResult"]
