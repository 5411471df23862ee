"""genret.tokenizers: RQ-KMeans semantic-ID tokenizer, the SID <-> item index, and the codebook report."""

from genret.tokenizers.report import codebook_report, format_report
from genret.tokenizers.rq_kmeans import ArtifactError, ArtifactNotFoundError, NotFittedError, RQKMeans
from genret.tokenizers.sid_index import SIDIndex

__all__ = [
    "RQKMeans",
    "SIDIndex",
    "codebook_report",
    "format_report",
    "NotFittedError",
    "ArtifactError",
    "ArtifactNotFoundError",
]
