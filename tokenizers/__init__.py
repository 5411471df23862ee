"""genret.tokenizers: RQ-KMeans semantic-ID tokenizer, the SID <-> item index, and the codebook report."""

from genret.tokenizers.report import codebook_report, format_report
from genret.tokenizers.rq_kmeans import ArtifactError, ArtifactNotFoundError, NotFittedError, RQKMeans
from genret.tokenizers.sid_index import SIDIndex
from genret.tokenizers.unique_codes import spread_last_level

__all__ = [
    "RQKMeans",
    "SIDIndex",
    "spread_last_level",
    "codebook_report",
    "format_report",
    "NotFittedError",
    "ArtifactError",
    "ArtifactNotFoundError",
]
